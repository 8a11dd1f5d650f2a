package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"banger/internal/api"
	"banger/internal/snapshot"
	"banger/internal/store"
	"banger/internal/vmm"
)

// This file is warm starts: a VM of the same image, kernel, agent, VMM
// and shape as an earlier one is restored from that one's template, the
// snapshot taken the instant it was first ready, instead of booted.

// templateKey is the key of v's warm template ("" when v's VMM cannot
// restore, or its version or the agent cannot be read).
func (s *Service) templateKey(ctx context.Context, v api.VM, img api.Image, k api.Kernel) string {
	_, b, err := s.backends.Pick(v.VMM)
	if err != nil || b.Restorer() == nil {
		return ""
	}
	version, err := s.vmmVersion(ctx, v.VMM)
	if err != nil {
		s.log.Info("no warm start: the VMM's version is unknown", "err", err)
		return ""
	}
	agent, err := s.agentHash()
	if err != nil {
		return ""
	}
	return snapshot.Key(v.Owner, v.VMM, version, img.ID, k.ID, agent, v.VCPU, v.MemoryMiB, v.DiskBytes, v.Network)
}

// warmStart returns v's template key and, when a usable template has
// it, what to restore v from. A damaged template is dropped.
func (s *Service) warmStart(ctx context.Context, v api.VM, img api.Image, k api.Kernel) (string, *restoreFrom) {
	key := s.templateKey(ctx, v, img, k)
	if key == "" {
		return "", nil
	}
	tpl, err := s.store.Template(ctx, key)
	if err != nil {
		return key, nil
	}
	if _, err := s.restorable(ctx, tpl); err != nil {
		s.log.Warn("warm template unusable: dropping it", "template", tpl.Name, "err", err)
		s.dropSnapshot(ctx, tpl, err.Error())
		return key, nil
	}
	return key, &restoreFrom{snap: tpl}
}

// templateFlights are the warm templates being made, by key.
type templateFlights struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

// templateFlight makes the caller the maker of the template for key
// (first true: it boots cold and captures it, then calls done), or, when
// another request is making it, waits until that one is done (or ctx
// ends) and returns false: VMs of one shape that arrive together boot
// once and restore the rest, instead of each booting cold to capture
// the same template.
func (s *Service) templateFlight(ctx context.Context, key string) (maker bool, done func()) {
	s.templates.mu.Lock()
	if s.templates.m == nil {
		s.templates.m = map[string]chan struct{}{}
	}
	ch := s.templates.m[key]
	if ch == nil {
		ch = make(chan struct{})
		s.templates.m[key] = ch
		s.templates.mu.Unlock()
		return true, func() {
			s.templates.mu.Lock()
			delete(s.templates.m, key)
			s.templates.mu.Unlock()
			close(ch)
		}
	}
	s.templates.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
	}
	return false, func() {}
}

// templateName is the name of the template with key.
func templateName(key string) string { return "template-" + key }

// captureTemplate snapshots the VM v, just ready after a cold boot and
// not yet used, as the warm template for key. A template someone else
// made meanwhile is fine; a failure costs only the next run's warmth.
func (s *Service) captureTemplate(ctx context.Context, v api.VM, key string) error {
	if _, err := s.store.Template(ctx, key); err == nil {
		return nil
	}
	sn, err := s.takeSnapshot(ctx, v, v.Owner, templateName(key), api.SnapshotKindTemplate, key)
	if errors.Is(err, store.ErrExists) {
		return nil
	}
	if err != nil {
		s.log.Warn("no warm template made", "vm", v.Name, "err", err)
		return err
	}
	s.log.Info("warm template made", "template", sn.Name, "image", sn.Image, "size", sn.SizeBytes, "paused_ms", sn.PausedMs)
	return nil
}

// Warm makes a template ahead of time, by booting a throwaway VM of the
// requested shape, so even the first `vm run` of it restores. An
// existing template is the answer as is (made false).
// The template is c's: warm starts restore only their owner's.
func (s *Service) Warm(ctx context.Context, c Caller, req api.WarmRequest) (tpl api.Snapshot, made bool, err error) {
	creq := api.VMCreateRequest{Name: "warm-" + store.NewID()[:8], Image: req.Image, Kernel: req.Kernel, VMM: req.VMM,
		VCPU: req.VCPU, MemoryMiB: req.MemoryMiB, DiskBytes: req.DiskBytes, Network: req.Network, NoStart: true}
	v, err := s.createVM(ctx, c, creq, nil)
	if err != nil {
		return tpl, false, err
	}
	defer s.removeVM(context.Background(), v.Name)
	unlock := s.vmLock(v.Name)
	defer unlock()
	img, err := s.store.Image(ctx, v.Image)
	if err != nil {
		return tpl, false, err
	}
	k, err := s.store.Kernel(ctx, v.Kernel)
	if err != nil {
		return tpl, false, err
	}
	key := s.templateKey(ctx, *v, img, k)
	if key == "" {
		return tpl, false, fmt.Errorf("%w: warm templates on %s", vmm.ErrNotSupported, v.VMM)
	}
	if tpl, err := s.store.Template(ctx, key); err == nil {
		return tpl, false, nil
	}
	if maker, done := s.templateFlight(ctx, key); !maker {
		if tpl, err := s.store.Template(ctx, key); err == nil {
			return tpl, false, nil
		}
		return tpl, false, fmt.Errorf("the warm template of %s could not be made by the VM that was making it: %s says why", v.Image, s.layout.DaemonLog())
	} else {
		defer done()
	}
	if _, err := s.launchVMLocked(*v, nil, key, nil); err != nil {
		return tpl, false, err
	}
	if tpl, err = s.store.Template(ctx, key); err != nil {
		return tpl, false, fmt.Errorf("the warm template of %s could not be made: %s says why", v.Image, s.layout.DaemonLog())
	}
	return tpl, true, nil
}

// removeVM kills and removes the named VM, as `vm rm -f` does.
func (s *Service) removeVM(ctx context.Context, name string) error {
	unlock := s.vmLock(name)
	defer unlock()
	v, err := s.store.VM(ctx, name)
	if err != nil {
		return err
	}
	return s.removeVMLocked(ctx, v)
}

func (s *Service) removeVMLocked(ctx context.Context, v api.VM) error {
	if State(v.State).Live() {
		if _, err := s.stopVMLocked(ctx, v, true); err != nil {
			return err
		}
	}
	if _, err := s.store.DeleteVM(ctx, v.Name); err != nil {
		return err
	}
	s.net.Remove(v)
	if err := os.RemoveAll(v.Dir); err != nil {
		s.log.Warn("removing VM files", "vm", v.Name, "err", err)
	}
	s.log.Info("vm removed", "vm", v.Name)
	return nil
}

// ImageRemoved drops the warm templates of an image that was removed:
// they would restore what is no longer there.
func (s *Service) ImageRemoved(ctx context.Context, img api.Image) {
	s.dropTemplates(ctx, "its image was removed", func(sn api.Snapshot) bool { return sn.ImageID == img.ID })
}

// KernelRemoved drops the warm templates of a kernel that was removed.
func (s *Service) KernelRemoved(ctx context.Context, k api.Kernel) {
	s.dropTemplates(ctx, "its kernel was removed", func(sn api.Snapshot) bool { return sn.KernelID == k.ID })
}
