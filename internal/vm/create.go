package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/hostnet"
	"banger/internal/store"
	"banger/internal/vmnet"
)

// This file is how a VM comes to exist (Create) and the verbs on one VM
// by name: start, restart, stop, kill, pause, resume, show and list.

// vmHint says where to look when a VM is not found.
func vmHint(err error) error {
	return store.Hint(err, "list VMs with `banger vm ls`")
}

// Create makes a VM from req and, unless req.NoStart, starts it (from a
// warm template when one fits, else by booting) and returns it running.
// Stages go to progress: disk, network, vmm or restore, boot or
// identity, template.
func (s *Service) Create(ctx context.Context, c Caller, req api.VMCreateRequest, progress func(string)) (*api.VM, error) {
	return s.createVM(ctx, c, req, progress)
}

func (s *Service) createVM(ctx context.Context, c Caller, req api.VMCreateRequest, progress func(string)) (*api.VM, error) {
	v, unlock, err := s.newVMRecord(ctx, c, req.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	cfg := s.cfg
	v.Labels = req.Labels
	if err := checkRun(req.Run); err != nil {
		return nil, err
	}
	v.Run = req.Run
	if v.Policy, err = policyOf(req.AllowOut, req.DenyOut, req.Direct); err != nil {
		return nil, err
	}
	if req.Image == "" {
		req.Image = cfg.DefaultImage
	}
	img, err := s.store.Image(ctx, req.Image)
	if err != nil {
		return nil, store.Hint(err, "pull it with `banger image pull "+req.Image+"`")
	}
	kk, err := s.kernels.Resolve(ctx, req.Kernel, cfg.DefaultKernel)
	if err != nil {
		return nil, err
	}
	k := &kk
	if req.VMM == "" {
		req.VMM = cfg.VMM
	}
	if req.Network == "" {
		req.Network = cfg.Network
	}
	choice, _, err := s.backends.Pick(req.VMM)
	if err != nil {
		return nil, err
	}
	mode, err := hostnet.ParseMode(req.Network)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	ports, err := vmnet.ParsePorts(mode, req.Ports)
	if err != nil {
		return nil, err
	}
	if err := s.checkPorts(c, ports); err != nil {
		return nil, err
	}
	mounts, err := s.resolveMounts(c, req.Mounts, choice, *k)
	if err != nil {
		return nil, err
	}
	alloc, err := s.net.Prepare(mode, ports)
	if err != nil {
		return nil, err
	}
	v.Mounts = mounts
	mem, _ := config.ParseSize(cfg.Memory)
	v.Image, v.Kernel, v.VMM = img.Name, k.Name, choice
	v.VCPU, v.MemoryMiB, v.DiskBytes = orInt(req.VCPU, cfg.VCPU), orInt(req.MemoryMiB, int(mem>>20)), req.DiskBytes
	v.Network, v.Ports = string(mode), ports
	if v.DiskBytes == 0 {
		v.DiskBytes, _ = config.ParseSize(cfg.DiskSize)
	}
	if v.VCPU < 1 || v.VCPU > 32 || v.MemoryMiB < 128 || v.DiskBytes < 64<<20 {
		return nil, fmt.Errorf("%w: --vcpu 1..32, --memory at least 128 MiB, --disk-size at least 64 MiB", api.ErrInvalid)
	}
	if err := s.checkSizes(v); err != nil {
		return nil, err
	}
	release, err := s.admit(ctx, c, v, !req.NoStart)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := os.MkdirAll(v.Dir, vmDirMode); err != nil {
		return nil, err
	}
	// A warm start: the template's disk instead of a new one, restored
	// instead of booted.
	var from *restoreFrom
	key := ""
	// A VM with shared directories cannot be snapshotted (see
	// takeSnapshot), so it neither restores a template nor makes one.
	if cfg.Warm && !req.Cold && !req.NoStart && len(mounts) == 0 {
		key, from = s.warmStart(ctx, v, img, *k)
		if key != "" && from == nil {
			// No template yet: this VM boots and makes it, or waits for
			// the one another VM of its shape is making and restores.
			maker, done := s.templateFlight(ctx, key)
			defer done()
			if !maker {
				key, from = s.warmStart(ctx, v, img, *k)
			}
		}
	}
	say(progress, "disk")
	if from != nil {
		hostKey, err := s.restoredDisk(v, from.snap)
		if err != nil {
			return nil, err
		}
		from.hostKey = hostKey
		// The template's disk holds the run spec of the VM it was made
		// from; this VM's goes with its identity.
		from.run = runSpec(v, img)
		v.Origin = "template " + from.snap.Name
	} else if err := s.newDataDisk(ctx, v, img); err != nil {
		return nil, err
	}
	v.CreatedAt = time.Now().UTC()
	if err := s.store.InsertVM(ctx, &v, alloc); err != nil {
		os.RemoveAll(v.Dir)
		return nil, err
	}
	s.log.Info("vm created", "vm", v.Name, "image", img.Name, "kernel", k.Name, "vmm", choice, "origin", v.Origin)
	if req.NoStart {
		return &v, nil
	}
	if from == nil {
		return s.launchVMLocked(v, nil, key, progress)
	}
	// The template cannot be removed while its files are opened.
	unlockSnap := s.snapshotLock(from.snap.ID, false)
	out, err := s.launchVMLocked(v, from, "", progress)
	unlockSnap()
	if err == nil {
		return out, nil
	}
	// A template that does not restore is of no use to anyone: drop it
	// and boot this VM cold on a new disk (which makes a new template).
	s.log.Warn("warm start failed: dropping the template, booting cold", "vm", v.Name, "template", from.snap.Name, "err", err)
	s.dropSnapshot(ctx, from.snap, "it did not restore")
	cur, gerr := s.store.VM(ctx, v.Name)
	if gerr != nil {
		return nil, err
	}
	os.Remove(filepath.Join(cur.Dir, DataDisk))
	if err := s.newDataDisk(ctx, cur, img); err != nil {
		return nil, err
	}
	cur.Origin = ""
	if err := s.store.SetVMOrigin(ctx, cur.Name, ""); err != nil {
		return nil, err
	}
	return s.launchVMLocked(cur, nil, key, progress)
}

// newDataDisk makes v's writable disk, seeded with the image's run spec
// and the VM's SSH keys. On error v's directory is removed.
func (s *Service) newDataDisk(ctx context.Context, v api.VM, img api.Image) error {
	spec := runSpec(v, img)
	seed, err := s.sshSeed(v)
	if err != nil {
		os.RemoveAll(v.Dir)
		return err
	}
	if _, err := CreateDataDisk(ctx, s.runner, v.Dir, v.DiskBytes, spec, seed); err != nil {
		os.RemoveAll(v.Dir)
		return err
	}
	return nil
}

func orInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func (s *Service) transition(ctx context.Context, v *api.VM, ev Event, pid int, msg string) error {
	next, err := Next(State(v.State), ev)
	if err != nil {
		return fmt.Errorf("VM %q: %w", v.Name, err)
	}
	if err := s.store.SetVMState(ctx, v.Name, string(next), pid, msg); err != nil {
		return err
	}
	v.State, v.PID, v.Error = string(next), pid, msg
	if !next.Live() {
		// No VMM maps the guest's RAM any more, serves its mounts or
		// writes its console (but for a kill, recorded first: see
		// stopVMLocked).
		os.Remove(s.layout.RAMFile(v.ID))
		s.stopMounts(ctx, v.Name)
		s.endConsole(v.Dir)
	}
	return nil
}

// Get is c's VM named name, with its owner's name and SSH host key.
func (s *Service) Get(ctx context.Context, c Caller, name string) (api.VM, error) {
	v, err := s.lookup(ctx, c, name)
	if err != nil {
		return v, err
	}
	v = shown(v)
	v.Memory = s.vmMemory(ctx, v)
	return v, nil
}

// List is every VM c may see (an admin: all), with owners' names and
// SSH host keys.
func (s *Service) List(ctx context.Context, c Caller) ([]api.VM, error) {
	vms, err := s.store.VMs(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.VM{}
	for _, v := range vms {
		if c.sees(v.Owner) {
			out = append(out, shown(v))
		}
	}
	return out, nil
}

// Start starts c's stopped (or failed, or never started) VM name.
func (s *Service) Start(ctx context.Context, c Caller, name string, progress func(string)) (*api.VM, error) {
	v, unlock, err := s.lockOwn(ctx, c, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := Next(State(v.State), EvStart); err != nil {
		return nil, fmt.Errorf("VM %q: %w", name, err)
	}
	release, err := s.admit(ctx, c, v, true)
	if err != nil {
		return nil, err
	}
	defer release()
	return s.startVMLocked(v, progress)
}

// Restart stops c's VM name gracefully when it runs, then starts it.
func (s *Service) Restart(ctx context.Context, c Caller, name string, progress func(string)) (*api.VM, error) {
	v, unlock, err := s.lockOwn(ctx, c, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// A running VM restarts within the limits it ran in.
	release := func() {}
	if State(v.State).Live() {
		if _, err := s.stopVMLocked(ctx, v, false); err != nil {
			return nil, err
		}
		if s.killWaiting(name) {
			return nil, fmt.Errorf("%w: VM %q was killed while it restarted (`banger vm kill` or `vm rm -f`): it stays stopped; start it with `banger vm start %s`", api.ErrConflict, name, name)
		}
		if v, err = s.store.VM(ctx, name); err != nil {
			return nil, vmHint(err)
		}
	} else if release, err = s.admit(ctx, c, v, true); err != nil {
		return nil, err
	}
	defer release()
	return s.startVMLocked(v, progress)
}

// Stop shuts c's VM name down gracefully: the guest syncs and powers
// off, and is killed after 30 s. A Kill meanwhile cuts it short.
func (s *Service) Stop(ctx context.Context, c Caller, name string) (*api.VM, error) {
	v, unlock, err := s.lockOwn(ctx, c, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.stopVMLocked(ctx, v, false)
}

// Kill ends the VMM of c's VM name at once. It never waits for a
// graceful stop under way: it cuts it short (see killLock) — after the
// check that the VM is c's, so no one cuts another user's stop.
func (s *Service) Kill(ctx context.Context, c Caller, name string) (*api.VM, error) {
	if _, err := s.lookup(ctx, c, name); err != nil {
		return nil, err
	}
	unlock, cut := s.killLock(name)
	defer unlock()
	v, err := s.lookup(ctx, c, name)
	if err != nil {
		return nil, err
	}
	if cut && !State(v.State).Live() {
		return &v, nil // the stop this kill cut short has killed the VM
	}
	return s.stopVMLocked(ctx, v, true)
}

// Pause freezes the guest of c's VM name.
func (s *Service) Pause(ctx context.Context, c Caller, name string) (*api.VM, error) {
	return s.pauseByName(ctx, c, name, true)
}

// Resume thaws the guest of c's VM name.
func (s *Service) Resume(ctx context.Context, c Caller, name string) (*api.VM, error) {
	return s.pauseByName(ctx, c, name, false)
}

func (s *Service) pauseByName(ctx context.Context, c Caller, name string, pause bool) (*api.VM, error) {
	v, unlock, err := s.lockOwn(ctx, c, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.pauseVMLocked(ctx, v, pause)
}
