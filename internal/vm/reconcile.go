package vm

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"banger/internal/api"
	"banger/internal/paths"
	"banger/internal/vmm"
)

// Reconcile makes the service's view agree with the host after a
// daemon restart, a crash or a kill -9: VMs whose VMM still runs are
// adopted again (their stops, pauses and power-offs handled as if this
// service had started them), those whose VMM died are recorded stopped,
// a start that a dead daemon left half done is undone; then snapshots
// and templates, guest RAM files and the network follow, and what
// belongs to no VM goes.
func (s *Service) Reconcile(ctx context.Context) error {
	// Guest RAM goes into a directory under /dev/shm whose name anyone
	// can predict: one planted by another user is moved aside (or, when
	// that is not allowed, every QEMU start says what to remove).
	if moved, err := vmm.PrivateDir(s.layout.RAMDir()); err != nil {
		s.log.Warn("guest RAM directory is unsafe: QEMU VMs will not start until it is removed", "err", err)
	} else if moved != "" {
		s.log.Warn("guest RAM directory was not bangerd's own (another user made it, or it was open to others): moved it aside and made a new one", "dir", s.layout.RAMDir(), "moved_to", moved)
	}
	closePrivateDirs(s, s.layout.VMsDir(), s.layout.SnapshotsDir())
	s.adoptOldKeys()
	if err := s.reconcileVMs(ctx); err != nil {
		return err
	}
	if err := s.reconcileSnapshots(ctx); err != nil {
		return err
	}
	// The network is rebuilt at every VM start and stop: a failure here
	// is worth a warning, not a daemon that cannot start.
	vms, err := s.store.VMs(ctx)
	if err != nil {
		return err
	}
	live := func(v api.VM) bool { return State(v.State) == Running || State(v.State) == Paused }
	if err := s.net.Reconcile(ctx, vms, live, s.netPolicy); err != nil {
		s.log.Warn("reconciling the VM network (retried at the next VM start or stop)", "err", err)
	}
	return nil
}

// attach adopts the running VMM of v after a daemon restart.
func (s *Service) attach(ctx context.Context, v api.VM) (vmm.Machine, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, b, err := s.backends.Pick(v.VMM)
	if err != nil {
		return nil, err
	}
	return b.Attach(ctx, v.Dir, v.PID)
}

// reconcileVMs runs at daemon start: a VM whose VMM died while the daemon
// was away is marked stopped; one whose VMM still runs keeps its state
// (the daemon can stop it by pid) and its cgroup, made again; directories
// and cgroups of no VM that runs go.
func (s *Service) reconcileVMs(ctx context.Context) error {
	vms, err := s.store.VMs(ctx)
	if err != nil {
		return err
	}
	known, running := map[string]bool{}, map[string]bool{}
	for _, v := range vms {
		known[v.ID] = true
		if !State(v.State).Live() {
			s.stopMounts(ctx, v.Name) // a daemon killed mid-stop may have left them
			continue
		}
		alive := vmmProcess(v.PID, v.Dir)
		switch {
		case v.State == string(Starting):
			// The daemon died while the VM booted: nobody saw it
			// become ready, and its pid may not even be recorded. Stop
			// every VMM of this VM and start over cleanly.
			for _, pid := range vmmProcesses(v.Dir) {
				killPID(context.Background(), pid, v.Dir, true)
			}
			if err := s.transition(ctx, &v, EvFail, 0, "interrupted: bangerd stopped while the VM was starting; start it again"); err != nil {
				return err
			}
			s.log.Info("vm start interrupted", "vm", v.Name)
		case alive:
			// Its processes stay contained, also when its VMM does
			// not answer (it can still be killed).
			running[v.ID] = true
			oomBase := s.adoptCgroup(v)
			// Adopt the VMM again: stop, pause and the VM's own
			// power-off are noticed as if this daemon had started it.
			m, err := s.attach(ctx, v)
			if err != nil {
				s.log.Warn("vm still running, but its VMM does not answer: it can be killed, not stopped gracefully", "vm", v.Name, "pid", v.PID, "err", err)
				continue
			}
			s.setMachine(v.ID, m)
			s.setMapped(v.ID, s.findMapped(ctx, v))
			go s.watchExit(v, m, oomBase)
			s.adoptMounts(v)
			if v.State == string(Running) {
				// A daemon killed while it snapshotted this VM left it
				// frozen: thaw it (a running guest does not mind), and
				// release a command held for a template that was never
				// finished.
				if p, ok := m.(vmm.Pauser); ok {
					p.Resume(ctx)
				}
				s.jobs.Add(1)
				go func(v api.VM) {
					defer s.jobs.Done()
					s.agentOp(s.jobCtx, v, "release")
				}(v)
			}
			if v.State == string(Paused) {
				// The record says paused: make sure the VMM agrees (the
				// daemon may have died between a resume and its record).
				if p, ok := m.(vmm.Pauser); ok {
					if err := p.Pause(ctx); err != nil {
						s.log.Warn("vm recorded as paused could not be paused again", "vm", v.Name, "err", err)
					}
				}
			}
			s.log.Info("vm still running", "vm", v.Name, "pid", v.PID)
		default:
			if err := s.transition(ctx, &v, EvExited, 0, ""); err != nil {
				return err
			}
			s.log.Info("vm found stopped", "vm", v.Name)
		}
	}
	s.sweepCgroups(running)
	return paths.RemoveLeftovers(s.log, s.layout.VMsDir(), known)
}

// closePrivateDirs brings what older banger versions made world-readable
// (VM and snapshot directories 0755, disks 0644) to the modes new ones get:
// directories 0700, their regular files 0600.
func closePrivateDirs(s *Service, parents ...string) {
	for _, parent := range parents {
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			dir := filepath.Join(parent, e.Name())
			if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() || fi.Mode().Perm() == vmDirMode {
				continue
			}
			if err := os.Chmod(dir, vmDirMode); err != nil {
				s.log.Warn("closing a VM or snapshot directory to others", "dir", dir, "err", err)
				continue
			}
			files, _ := os.ReadDir(dir)
			for _, f := range files {
				if f.Type().IsRegular() {
					os.Chmod(filepath.Join(dir, f.Name()), 0o600)
				}
			}
			s.log.Info("closed a VM or snapshot directory to others", "dir", dir)
		}
	}
}
