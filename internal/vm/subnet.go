package vm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"banger/internal/api"
	"banger/internal/store"
)

// SetSubnet makes p the VM subnet, while no VM holds an address (in any
// state): a Kubernetes node's VMs take their addresses from its
// podCIDR. Who may is the caller's business (the daemon checks).
func (s *Service) SetSubnet(ctx context.Context, p netip.Prefix) error {
	err := s.store.Unaddressed(ctx, func() error { return s.net.SetSubnet(p) })
	if errors.Is(err, store.ErrAddressed) {
		return fmt.Errorf("%w: the VM subnet cannot change to %s: %v; remove them first (`banger vm rm -f`)", api.ErrConflict, p, err)
	}
	return err
}

// Addressed is how many VMs hold an address of the VM subnet.
func (s *Service) Addressed(ctx context.Context) (int, error) { return s.store.Addressed(ctx) }
