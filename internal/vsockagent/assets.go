// Package vsockagent is banger's guest agent: the files that install it in
// a guest (binary path, systemd unit, modules-load configuration), its
// protocol (docs/agent-protocol.md), its server (exec, detached processes,
// copies, file system ops, ports, SSH) and the host's side: the session
// and the typed helpers of hostops.go. This file holds only the
// install-time assets, which the image pipeline injects.
package vsockagent

import _ "embed"

// GuestInstallPath is where the agent binary lives in every guest.
const GuestInstallPath = "/usr/local/bin/banger-vsock-agent"

// ServiceName is the agent's systemd unit.
const ServiceName = "banger-vsock-agent.service"

// ModulesLoadPath is the modules-load.d file that loads the vsock modules.
const ModulesLoadPath = "/etc/modules-load.d/banger-vsock.conf"

//go:embed banger-vsock-agent.service
var serviceUnit string

//go:embed banger-vsock.conf
var modulesLoad string

// ServiceUnit returns the agent's systemd unit file.
func ServiceUnit() string { return serviceUnit }

// ModulesLoadConfig returns the modules-load.d content for the vsock modules.
func ModulesLoadConfig() string { return modulesLoad }
