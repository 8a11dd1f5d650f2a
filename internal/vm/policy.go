package vm

import (
	"context"
	"fmt"

	"banger/internal/api"
	"banger/internal/vmnet"
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
		if p, err = policyOf(req.AllowOut, req.DenyOut, req.Direct); err != nil {
			return nil, err
		}
		if p == nil {
			return nil, fmt.Errorf("%w: give --allow-out, --deny-out or direct networks, or --reset for the default rules", api.ErrInvalid)
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

// applyPolicy gives the running VM v its recorded egress rules, at once
// (connections to what is now denied are cut at their next packet).
func (s *Service) applyPolicy(ctx context.Context, v api.VM) error {
	return s.net.SetPolicy(ctx, v, s.netPolicy(v))
}

// policyOf checks a request's --allow-out, --deny-out and direct values
// and returns them in canonical form, nil for none (the default rules).
func policyOf(allow, deny, direct []string) (*api.Policy, error) {
	p, err := parsePolicy(allow, deny, direct)
	if err != nil {
		return nil, err
	}
	if p.IsDefault() {
		return nil, nil
	}
	return &api.Policy{AllowOut: p.AllowOut(), DenyOut: p.DenyOut(), Direct: p.Direct()}, nil
}

func parsePolicy(allow, deny, direct []string) (vmnet.Policy, error) {
	p, err := vmnet.ParsePolicy(allow, deny)
	if err != nil {
		return p, err
	}
	p.DirectPrefixes, err = vmnet.ParseDirect(direct)
	return p, err
}

// netPolicy is v's recorded policy as the network runtime takes it. It
// was checked when it was recorded; parsing it again cannot fail unless
// a newer banger reads rules an older one accepted, and then the VM gets
// the default rules and the log says why.
func (s *Service) netPolicy(v api.VM) vmnet.Policy {
	if v.Policy == nil {
		return vmnet.Policy{}
	}
	p, err := parsePolicy(v.Policy.AllowOut, v.Policy.DenyOut, v.Policy.Direct)
	if err != nil {
		s.log.Warn("the VM's recorded egress rules no longer parse: it gets the default rules; set them again with `banger vm policy`", "vm", v.Name, "err", err)
		return vmnet.Policy{}
	}
	return p
}
