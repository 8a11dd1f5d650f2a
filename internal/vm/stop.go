package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/consolelog"
)

// This file is how VMs end and how they are found again: graceful stop
// and kill, identifying a VMM process by its command line, and the
// reconcile at daemon start that adopts the VMMs still running.

// errStopCut is why a graceful stop ended early: a kill wanted the VM.
var errStopCut = errors.New("a kill cut the graceful stop short")

// killLock takes the VM's lock for a kill or a forced removal. A
// graceful stop that holds it is cut short (errStopCut): it kills the
// VMM at once and lets go, for a kill must never wait on a guest that
// may not power off. cut reports whether a stop was under way.
func (s *Service) killLock(name string) (unlock func(), cut bool) {
	s.vms.mu.Lock()
	if s.vms.killers == nil {
		s.vms.killers = map[string]int{}
	}
	s.vms.killers[name]++
	if stop := s.vms.stopping[name]; stop != nil {
		stop(errStopCut)
		cut = true
		s.log.Info("graceful stop cut short by a kill", "vm", name)
	}
	s.vms.mu.Unlock()
	unlock = s.vmLock(name)
	s.vms.mu.Lock()
	if s.vms.killers[name]--; s.vms.killers[name] == 0 {
		delete(s.vms.killers, name)
	}
	s.vms.mu.Unlock()
	return unlock, cut
}

// gracefulStop registers the graceful stop of the named VM (its lock
// held) for killLock to cut, and returns its context: cancelled with
// errStopCut by a kill, also one that asked just before the stop
// began. done unregisters it.
func (s *Service) gracefulStop(name string) (ctx context.Context, done func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	s.vms.mu.Lock()
	if s.vms.stopping == nil {
		s.vms.stopping = map[string]context.CancelCauseFunc{}
	}
	s.vms.stopping[name] = cancel
	if s.vms.killers[name] > 0 {
		cancel(errStopCut)
	}
	s.vms.mu.Unlock()
	return ctx, func() {
		s.vms.mu.Lock()
		delete(s.vms.stopping, name)
		s.vms.mu.Unlock()
		cancel(nil)
	}
}

// killWaiting reports whether a kill waits for the named VM's lock.
func (s *Service) killWaiting(name string) bool {
	s.vms.mu.Lock()
	defer s.vms.mu.Unlock()
	return s.vms.killers[name] > 0
}

// stopVMLocked shuts a VM down gracefully (the guest syncs and powers
// off; after 30 s it is killed), or kills it at once. A kill that comes
// while a graceful stop runs (killLock) turns it into a kill at once.
func (s *Service) stopVMLocked(ctx context.Context, v api.VM, kill bool) (*api.VM, error) {
	ev := EvStop
	if kill {
		ev = EvKill
	}
	graceful := context.Background()
	if !kill {
		var done func()
		graceful, done = s.gracefulStop(v.Name)
		defer done()
	}
	if State(v.State) == Paused && !kill {
		// The guest must run to sync and power off; if it cannot be
		// thawed, the stop ends in the kill at the deadline.
		if p, err := s.pauser(v); err == nil {
			rctx, cancel := context.WithTimeout(graceful, 10*time.Second)
			if p.Resume(rctx) == nil {
				s.agentPaused(v.ID, false)
			}
			cancel()
		}
	}
	if err := s.transition(ctx, &v, ev, v.PID, ""); err != nil {
		return nil, err
	}
	m := s.machine(v.ID)
	sctx, cancel := context.WithTimeout(graceful, 30*time.Second)
	defer cancel()
	if m != nil && !kill {
		// Whatever step the stop is at, a kill that cuts it ends the
		// VMM now; the step then sees the VMM gone.
		stop := context.AfterFunc(graceful, func() {
			if errors.Is(context.Cause(graceful), errStopCut) {
				m.Kill()
			}
		})
		defer stop()
	}
	// A graceful stop asks the agent to sync and power off; a VM whose
	// agent does not answer gets the VMM's own request (ACPI power
	// button, Ctrl-Alt-Del), and either is killed at the deadline. The
	// agent's answer is awaited 3 s at most (agentOp): a guest that
	// stops reading cannot hold the VM's lock.
	viaAgent := !kill && s.agentPowerOff(sctx, v) == nil
	if errors.Is(context.Cause(graceful), errStopCut) {
		kill, viaAgent = true, false
	}
	switch {
	case m != nil && kill:
		m.Kill()
		m.Wait(context.Background())
	case m != nil && viaAgent:
		if m.Wait(sctx) != nil {
			m.Kill()
			m.Wait(context.Background())
		}
	case m != nil:
		m.Stop(sctx)
	case viaAgent:
		// No handle (the daemon restarted): watch the process go.
		for vmmProcess(v.PID, v.Dir) && sctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
		killPID(sctx, v.PID, v.Dir, true)
	default:
		killPID(sctx, v.PID, v.Dir, kill)
	}
	if kill {
		// A kill was recorded before the VMM ended, too early for its
		// console's writer to be checked then.
		s.endConsole(v.Dir)
	}
	s.dropAgent(v.ID)
	s.setMachine(v.ID, nil)
	s.setMapped(v.ID, nil)
	if State(v.State).Live() {
		if err := s.transition(ctx, &v, EvExited, 0, ""); err != nil {
			return nil, err
		}
	}
	// The VMM is reaped, its mounts and console ended (transition):
	// what is left in the VM's cgroup is killed with it.
	s.dropCgroup(v.ID, v.Name)
	s.store.SetVMPID(ctx, v.Name, 0)
	v.PID = 0
	s.net.Detach(ctx, v)
	s.log.Info("vm stopped", "vm", v.Name, "killed", kill)
	return &v, nil
}

// vmmProcess reports whether pid is a VMM of the VM in dir: a bare pid
// may have been reused since it was recorded. The VM's console log
// helper names dir too, and is not its VMM.
func vmmProcess(pid int, dir string) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(b, []byte(dir)) && !consolelog.IsHelper(argv(b), consolePath(dir))
}

// vmmProcesses finds every process whose command line names the VM
// directory dir: the VMMs of that VM, recorded or not.
func vmmProcesses(dir string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err == nil && pid != os.Getpid() && vmmProcess(pid, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killPID ends the VMM pid of the VM in dir: at once, or after up to
// 5 s of SIGTERM, cut short when ctx ends.
func killPID(ctx context.Context, pid int, dir string, now bool) {
	if !vmmProcess(pid, dir) {
		return
	}
	if !now {
		syscall.Kill(pid, syscall.SIGTERM)
		for i := 0; i < 100 && vmmProcess(pid, dir) && ctx.Err() == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if vmmProcess(pid, dir) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// Remove removes the VM name and its files. A live VM is refused unless
// force, which kills it first (cutting a graceful stop short).
func (s *Service) Remove(ctx context.Context, c Caller, name string, force bool) (api.VM, error) {
	if _, err := s.lookup(ctx, c, name); err != nil {
		return api.VM{}, err
	}
	var unlock func()
	if force {
		unlock, _ = s.killLock(name) // it kills: it waits for no stop
	} else {
		unlock = s.vmLock(name)
	}
	defer unlock()
	v, err := s.lookup(ctx, c, name)
	if err != nil {
		return v, err
	}
	if State(v.State).Live() && !force {
		return v, fmt.Errorf("%w: VM %q is %s: stop it first (`banger vm stop %s`) or use `banger vm rm -f %s`", api.ErrConflict, name, v.State, name, name)
	}
	if err := s.removeVMLocked(ctx, v); err != nil {
		return v, err
	}
	// A stop removed it already; this is for a VM whose group a failed
	// removal left behind.
	s.dropCgroup(v.ID, v.Name)
	return v, nil
}

// Prune removes every VM that is not live (created, stopped or in
// error) and returns their names.
// Only c's VMs go, an admin's included: root prunes its own, and
// removes others' one by one.
func (s *Service) Prune(ctx context.Context, c Caller) ([]string, error) {
	vms, err := s.store.VMs(ctx)
	if err != nil {
		return nil, err
	}
	removed := []string{}
	for _, v := range vms {
		if v.Owner != c.UID {
			continue
		}
		unlock := s.vmLock(v.Name)
		cur, err := s.store.VM(ctx, v.Name)
		if err == nil && cur.Owner == c.UID && !State(cur.State).Live() {
			if _, err := s.store.DeleteVM(ctx, cur.Name); err == nil {
				s.net.Remove(cur)
				s.dropCgroup(cur.ID, cur.Name)
				os.RemoveAll(cur.Dir)
				removed = append(removed, cur.Name)
			}
		}
		unlock()
	}
	s.log.Info("vms pruned", "count", len(removed))
	return removed, nil
}
