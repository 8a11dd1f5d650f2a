// Package guestnet provides the guest's network bootstrap: a POSIX shell
// script that configures the interface, host name, /etc/hosts and
// /etc/resolv.conf from banger.* kernel parameters, and the systemd unit
// that runs it on images that boot systemd. It does not configure the
// host side of the network (that is internal/hostnet).
package guestnet

import _ "embed"

// Where the bootstrap lands in the guest and the name of its unit.
const (
	GuestScriptPath    = "/usr/local/libexec/banger-network-bootstrap"
	SystemdServiceName = "banger-network.service"
)

//go:embed banger-network-bootstrap.sh
var bootstrapScript string

//go:embed banger-network.service
var serviceUnit string

// BootstrapScript returns the guest network bootstrap script.
func BootstrapScript() string { return bootstrapScript }

// SystemdServiceUnit returns the unit file that runs BootstrapScript.
func SystemdServiceUnit() string { return serviceUnit }
