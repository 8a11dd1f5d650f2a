package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/system"
	"banger/internal/virtiofs"
	"banger/internal/vmm"
)

// This file is -v: host directories shared live with a VM, one
// virtiofsd per mount, started before the VMM and ended with it. Synced
// mounts (syncmounts.go) share the checks and the ending.

// resolveMounts checks a create request's -v values for the calling
// user and the VM's VMM and kernel, and returns them as the VM records
// them: live virtio-fs shares on QEMU, synced copies on Firecracker (or
// when asked for with the sync option).
func (s *Service) resolveMounts(caller Caller, specs []string, vmmKind string, k api.Kernel) ([]api.Mount, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	c := virtiofs.Caller{UID: caller.UID, GID: caller.GID, Groups: caller.Groups}
	var out []api.Mount
	live, synced := 0, 0
	for i, spec := range specs {
		sp, err := virtiofs.Parse(spec)
		var m api.Mount
		if err == nil {
			m, err = virtiofs.Resolve(sp, c)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", api.ErrInvalid, err)
		}
		if vmmKind == "qemu" && !sp.Sync {
			m.Kind, m.Tag = api.MountVirtioFS, "banger"+strconv.Itoa(i)
			live++
		} else {
			m.Kind = api.MountSync
			synced++
		}
		out = append(out, m)
	}
	if err := virtiofs.Check(out); err != nil {
		return nil, fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	if live > 0 {
		if k.Initrd != "" && !slices.Contains(k.Modules, "virtiofs") {
			return nil, fmt.Errorf("%w: kernel %q has no virtio-fs driver packed (it was imported before banger shared directories, or lacks virtiofs.ko): import it again, e.g. `banger kernel rm %s && banger kernel pull %s`, or add :sync to the -v value", api.ErrInvalid, k.Name, k.Name, k.Name)
		}
		if _, err := virtiofs.Find(); err != nil {
			return nil, fmt.Errorf("%w: -v: %v (or add :sync to the -v value)", api.ErrInvalid, err)
		}
	}
	if synced > 0 {
		if _, err := syncHelper(); err != nil {
			return nil, fmt.Errorf("%w: -v: %v", api.ErrInvalid, err)
		}
	}
	return out, nil
}

// hasMount reports whether ms has a mount of kind (api.MountVirtioFS,
// api.MountSync).
func hasMount(ms []api.Mount, kind string) bool {
	return slices.ContainsFunc(ms, func(m api.Mount) bool { return m.Kind == kind })
}

// fsMarker names mount i of v's virtiofsd processes (virtiofs.Processes).
func fsMarker(v api.VM, i int) string { return v.ID + "/" + strconv.Itoa(i) }

func fsSocket(v api.VM, i int) string { return filepath.Join(v.Dir, "fs"+strconv.Itoa(i)+".sock") }
func fsLog(v api.VM, i int) string    { return filepath.Join(v.Dir, "fs"+strconv.Itoa(i)+".log") }

// startMounts starts a virtiofsd for each of v's mounts and returns the
// VMM's devices and the guest's command line parameters for them. On
// error none is left running.
func (s *Service) startMounts(ctx context.Context, v *api.VM) (devs []vmm.FS, cmdline []string, err error) {
	if !hasMount(v.Mounts, api.MountVirtioFS) {
		return nil, nil, nil
	}
	bin, err := virtiofs.Find()
	if err != nil {
		return nil, nil, err
	}
	var procs []*os.Process
	defer func() {
		if err != nil {
			for _, p := range procs {
				p.Kill()
				p.Wait()
			}
		}
	}()
	for i := range v.Mounts {
		m := &v.Mounts[i]
		if m.Kind != api.MountVirtioFS {
			continue
		}
		p, err := virtiofs.Start(bin, *m, fsSocket(*v, i), fsLog(*v, i), fsMarker(*v, i), system.WithStartHook(s.inCgroup(*v)))
		if err != nil {
			return nil, nil, err
		}
		procs = append(procs, p)
		m.PID, m.Error = p.Pid, ""
		devs = append(devs, vmm.FS{Tag: m.Tag, Socket: fsSocket(*v, i)})
		cmdline = append(cmdline, virtiofs.Cmdline(*m))
	}
	if err := s.store.SetVMMounts(ctx, v.Name, v.Mounts); err != nil {
		return nil, nil, err
	}
	for _, p := range procs {
		go p.Wait() // reaped here; watchMount sees it end
	}
	for i, m := range v.Mounts {
		if m.Kind == api.MountVirtioFS {
			go s.watchMount(*v, i)
		}
	}
	return devs, cmdline, nil
}

// adoptMounts watches the virtiofsd processes of a VM found running at
// daemon start (a mount whose virtiofsd is gone is recorded as failed)
// and starts its syncs again: their helpers ended with the daemon that
// relayed them.
func (s *Service) adoptMounts(v api.VM) {
	for i, m := range v.Mounts {
		switch {
		case m.Kind == api.MountSync:
			s.runSync(v, i, nil)
		case m.PID != 0:
			go s.watchMount(v, i)
		}
	}
}

// watchMount waits until no virtiofsd of mount i is left (virtiofsd
// forks a worker: either may be the one to go). If the VM still runs
// then, the mount failed: the guest sees I/O errors under it until the
// VM restarts. That goes in the VM's record and the log.
func (s *Service) watchMount(v api.VM, i int) {
	for len(virtiofs.Processes(fsMarker(v, i))) > 0 {
		select {
		case <-s.jobCtx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	unlock := s.vmLock(v.Name)
	defer unlock()
	cur, err := s.store.VM(context.Background(), v.Name)
	if err != nil || cur.ID != v.ID || i >= len(cur.Mounts) || cur.Mounts[i].PID != v.Mounts[i].PID {
		return
	}
	m := &cur.Mounts[i]
	m.PID = 0
	if State(cur.State).Live() && vmmProcess(cur.PID, cur.Dir) {
		m.Error = fmt.Sprintf("virtiofsd for %s ended while the VM ran: %s has its log; the guest gets I/O errors under %s until `banger vm restart %s`", m.Host, fsLog(cur, i), m.Guest, cur.Name)
		s.log.Warn("shared directory lost", "vm", cur.Name, "host", m.Host, "guest", m.Guest, "log", fsLog(cur, i))
	}
	s.store.SetVMMounts(context.Background(), cur.Name, cur.Mounts)
}

// stopMounts ends whatever virtiofsd or sync helper of v still runs
// (its VMM is gone: they end by themselves when it disconnects, this
// makes sure) and removes their sockets.
func (s *Service) stopMounts(ctx context.Context, name string) {
	v, err := s.store.VM(ctx, name)
	if err != nil || len(v.Mounts) == 0 {
		return
	}
	s.stopSyncs(v)
	for i := range v.Mounts {
		m := &v.Mounts[i]
		marker := fsMarker(v, i)
		for _, pid := range virtiofs.Processes(marker) {
			syscall.Kill(pid, syscall.SIGTERM)
		}
		for deadline := time.Now().Add(2 * time.Second); len(virtiofs.Processes(marker)) > 0 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		for _, pid := range virtiofs.Processes(marker) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		m.PID = 0
		os.Remove(fsSocket(v, i))
	}
	s.store.SetVMMounts(ctx, v.Name, v.Mounts)
}
