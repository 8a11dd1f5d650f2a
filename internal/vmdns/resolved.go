package vmdns

import (
	"context"
	"fmt"
	"net/netip"

	"banger/internal/system"
)

// ConfigureHost points the host's resolver at the server for the VM
// zone: systemd-resolved's per-link DNS and a routing-only domain
// (~vm) on the bridge, so NAME.vm resolves on the host and nothing
// else changes. Without resolvectl it returns ErrNoResolved; `banger
// doctor` explains the manual alternative.
func ConfigureHost(ctx context.Context, r system.CommandRunner, link string, addr netip.Addr) error {
	if _, err := system.LookPath("resolvectl"); err != nil {
		return ErrNoResolved
	}
	if _, err := r.Run(ctx, "resolvectl", "dns", link, addr.String()); err != nil {
		return fmt.Errorf("%w: setting %s's DNS server: %v", ErrNoResolved, link, err)
	}
	if _, err := r.Run(ctx, "resolvectl", "domain", link, "~"+Domain); err != nil {
		return fmt.Errorf("%w: routing .%s to %s: %v", ErrNoResolved, Domain, link, err)
	}
	return nil
}

// ErrNoResolved means the host has no systemd-resolved to route .vm
// names through; NAME.vm then resolves inside VMs only, until the host
// is told, e.g. with a dnsmasq or /etc/hosts entry (see `banger doctor`).
var ErrNoResolved = fmt.Errorf("systemd-resolved is not available to route .%s names", Domain)
