package vm

import (
	"errors"
	"os"
	"slices"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/cgroup"
	"banger/internal/system"
	"banger/internal/virtiofs"
	"banger/internal/vmm"
)

// This file is each VM's cgroup: the VMM, its virtiofsds, its sync
// helpers and its console log helper run together in a group named
// after the VM's id, under the daemon instance's parent, with limits
// on memory, CPU and tasks, so that one VM cannot take the host's
// memory, CPU time or pids from the others. The group is made before
// the first of those processes starts, which starts inside it; it is
// made again (limits re-applied, processes that are not in it added)
// for the VMs a restarted daemon adopts, and removed once the VM's
// processes are gone. Reconcile sweeps the groups of VMs that no longer
// run. Without a cgroup.Manager (Deps.Cgroups nil) all of this is off.

// vmMemoryOverhead is what a VM's processes may use on top of its guest
// memory, which its VMM maps in full once the guest has touched it.
// Measured here, QEMU under software emulation with 2 vCPUs, 512 MiB
// of guest RAM and one virtio-fs mount, after reading 10,000 files
// through it, filling the guest's RAM and running a few hundred
// commands: the group peaked at 614 MiB, of which 507 MiB guest RAM,
// 87 MiB QEMU's own anonymous memory (its TCG code cache, bounded to 64
// MiB by qemu.TCGCodeCacheMiB, is most of it: uncapped it could grow
// to 1 GiB) and 20 MiB the rest: virtiofsd (2 MiB of its own, plus the
// page cache of the files the guest reads, which can be reclaimed),
// the console log helper, page tables, socket buffers. The 90 MiB left
// hold a filesync helper's state and clean file pages (the kernel
// image QEMU maps, 48 MiB; its libraries, charged to the first VM that
// loads them), so that reclaim within the group does not thrash.
// Firecracker and QEMU under KVM need far less: the limit is a ceiling,
// not a reservation.
const vmMemoryOverhead = 192 << 20

// vmmPids and mountPids are a VM's budget of tasks (threads count): for
// the VMM, QEMU's main and RCU threads, a thread per vCPU (32 at most),
// its block I/O pool (aio=threads: up to 64 workers), and the console
// log helper (a Go program: 5 threads); each mount adds a virtiofsd (two
// processes, a thread pool of up to 64 under load) or a filesync helper.
// Measured: 17 to 19 tasks in the group of the VM above (QEMU 6 to 8,
// virtiofsd 6, the console helper 5). Past the budget a clone fails
// with EAGAIN and nothing is killed; it stops a runaway, and is not
// meant to be reached.
const (
	vmmPids   = 160
	mountPids = 96
)

// vmmCPUs is CPU time a VM gets beyond its vCPUs': for what its VMM does
// besides running the guest (device emulation, block I/O, the main
// loop) and for its helpers (virtiofsd, filesync, the console log).
// Held to exactly its vCPUs, a 1-vCPU VM under emulation took 59.6 s
// to create with a 10,000-file synced mount, against 35.6 s uncontained
// and 35.6 s with this one more: the guest's vCPU thread and the sync
// helper feeding it shared one CPU.
const vmmCPUs = 1

// oomMessage is the error of a VM whose VMM the kernel killed for
// going past its group's memory limit.
const oomMessage = "out of memory: the guest used more than its memory plus overhead; give it more with --memory"

// limits are what VM v's processes may use together, with overhead on
// top of its guest memory (vmMemoryOverhead unless a test says less):
// its memory, its vCPUs' worth of CPU time and the VMM's own, and a
// pids budget.
func limits(v api.VM, overhead int64) cgroup.Limits {
	return cgroup.Limits{
		MemoryBytes: int64(v.MemoryMiB)<<20 + overhead,
		CPUs:        float64(v.VCPU + vmmCPUs),
		Pids:        vmmPids + mountPids*len(v.Mounts),
	}
}

// makeCgroup makes v's group, or re-applies its limits to the one that
// is there, before any of v's processes starts, and returns the
// group's OOM kills so far (0 for a new group): an exit is blamed on
// the memory limit only if there were more. Without containment it
// does nothing.
func (s *Service) makeCgroup(v api.VM) (oomBase uint64, err error) {
	if s.cg == nil {
		return 0, nil
	}
	if err := s.cg.Create(v.ID, limits(v, s.memOverhead)); err != nil {
		return 0, err
	}
	st, _ := s.cg.Stats(v.ID)
	return st.OOMKills, nil
}

// inCgroup is the start hook of v's helper processes (virtiofsd, the
// sync and console log helpers): they start in v's group. nil without
// containment.
func (s *Service) inCgroup(v api.VM) system.StartHook {
	if s.cg == nil {
		return nil
	}
	return func(attr *syscall.SysProcAttr, start func() error) error {
		return s.cg.StartIn(v.ID, attr, start)
	}
}

// vmmStartHook is the start hook of v's VMM: in v's group, and in the VM
// network's namespace when v is networked, where it finds its TAP. The
// namespace is entered inside StartIn, on the thread that forks: on
// cgroup v1 that is a thread of StartIn's own, not the caller's.
func (s *Service) vmmStartHook(v api.VM) system.StartHook {
	return func(attr *syscall.SysProcAttr, start func() error) error {
		inNet := func() error { return s.net.Do(v, start) }
		if s.cg == nil {
			return inNet()
		}
		return s.cg.StartIn(v.ID, attr, inNet)
	}
}

// dropCgroup removes v's group once its processes should be gone (the
// VMM reaped, mounts and console ended). Any still in it are killed
// first: a helper that outlived its VMM must not keep the group, nor
// run on without limits. Never this daemon, which cgroup v1's StartIn
// places in a group for an instant while it starts a process there.
func (s *Service) dropCgroup(id, name string) {
	if s.cg == nil {
		return
	}
	var err error
	for range 100 {
		if err = s.cg.Remove(id); !errors.Is(err, cgroup.ErrBusy) {
			break
		}
		pids, _ := s.cg.Procs(id)
		for _, pid := range pids {
			if pid != os.Getpid() {
				s.log.Warn("process outlived its VM: killed to remove the VM's cgroup", "vm", name, "pid", pid)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		s.log.Warn("removing the VM's cgroup (reconcile retries at the next daemon start)", "vm", name, "err", err)
	}
}

// adoptCgroup makes the group of v, found running at daemon start,
// again with v's limits, and moves into it those of v's processes that
// are not in it: the VMM, its virtiofsds and its console log helper (a
// VM started by a daemon without containment, or a group a reboot of
// the cgroup hierarchy lost). It returns the group's OOM kills so far.
func (s *Service) adoptCgroup(v api.VM) uint64 {
	if s.cg == nil {
		return 0
	}
	base, err := s.makeCgroup(v)
	if err != nil {
		s.log.Warn("vm still running, but its cgroup could not be made: it runs without limits until it restarts", "vm", v.Name, "err", err)
		return 0
	}
	in, _ := s.cg.Procs(v.ID)
	pids := []int{v.PID}
	for i := range v.Mounts {
		pids = append(pids, virtiofs.Processes(fsMarker(v, i))...)
	}
	pids = append(pids, consoleHelpers(consolePath(v.Dir))...)
	for _, pid := range pids {
		if pid <= 0 || slices.Contains(in, pid) {
			continue
		}
		if err := s.cg.Add(v.ID, pid); err != nil {
			s.log.Warn("moving a process of a running VM into its cgroup", "vm", v.Name, "pid", pid, "err", err)
		} else {
			s.log.Info("process of a running VM moved into its cgroup", "vm", v.Name, "pid", pid)
		}
	}
	return base
}

// sweepCgroups removes the groups of VMs that do not run (live holds
// the ids of those that do), killing what is left in them: VMs removed
// or stopped while no daemon ran, starts a dead daemon left half done,
// removals that failed.
func (s *Service) sweepCgroups(live map[string]bool) {
	if s.cg == nil {
		return
	}
	names, err := s.cg.List()
	if err != nil {
		s.log.Warn("listing the VMs' cgroups", "err", err)
		return
	}
	for _, id := range names {
		if !live[id] {
			s.log.Info("removing the cgroup of a VM that does not run", "id", id)
			s.dropCgroup(id, id)
		}
	}
}

// oomKilled reports whether v's VMM m, which has exited, was killed by
// the kernel for its group's memory limit: its group's OOM kills went
// up since oomBase, and it died of SIGKILL (the OOM killer's signal)
// or, for a VMM this daemon adopted, how it died is unknown.
func (s *Service) oomKilled(v api.VM, m vmm.Machine, oomBase uint64) bool {
	if s.cg == nil {
		return false
	}
	st, err := s.cg.Stats(v.ID)
	if err != nil || st.OOMKills <= oomBase {
		return false
	}
	if e, ok := m.(interface {
		ExitSignal() (syscall.Signal, bool)
	}); ok {
		if sig, known := e.ExitSignal(); known && sig != syscall.SIGKILL {
			return false
		}
	}
	return true
}
