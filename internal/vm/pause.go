package vm

import (
	"context"
	"fmt"
	"time"

	"banger/internal/api"
	"banger/internal/vmm"
)

// pauseVMLocked freezes (pause) or thaws v's guest through its VMM: QMP
// stop/cont under QEMU, PATCH /vm under Firecracker. The state changes
// only once the VMM did it, so a failed pause leaves the VM running.
func (s *Service) pauseVMLocked(ctx context.Context, v api.VM, pause bool) (*api.VM, error) {
	ev, doing := EvPause, "pausing"
	if !pause {
		ev, doing = EvResume, "resuming"
	}
	if _, err := Next(State(v.State), ev); err != nil {
		return nil, fmt.Errorf("VM %q: %w", v.Name, err)
	}
	p, err := s.pauser(v)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	op := p.Resume
	if pause {
		op = p.Pause
		s.agentPaused(v.ID, true) // before the guest stops reading
	}
	if err := op(pctx); err != nil {
		s.agentPaused(v.ID, !pause)
		return nil, fmt.Errorf("%s VM %q: %w", doing, v.Name, err)
	}
	if !pause {
		s.agentPaused(v.ID, false)
	}
	if err := s.transition(ctx, &v, ev, v.PID, ""); err != nil {
		return nil, err
	}
	s.log.Info("vm "+string(ev)+"d", "vm", v.Name)
	return &v, nil
}

// pauser is the VMM handle of a live VM that can pause.
func (s *Service) pauser(v api.VM) (vmm.Pauser, error) {
	m := s.machine(v.ID)
	if m == nil {
		return nil, fmt.Errorf("%w: VM %q: bangerd has no handle on its VMM (it could not adopt it after a restart): it can only be killed, `banger vm kill %s`", api.ErrConflict, v.Name, v.Name)
	}
	p, ok := m.(vmm.Pauser)
	if !ok {
		return nil, fmt.Errorf("%w: VM %q: its VMM (%s) cannot pause", vmm.ErrNotSupported, v.Name, v.VMM)
	}
	return p, nil
}
