package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/consolelog"
	"banger/internal/vm"
	"banger/internal/vmm"
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
func (d *Daemon) killLock(name string) (unlock func(), cut bool) {
	d.vms.mu.Lock()
	if d.vms.killers == nil {
		d.vms.killers = map[string]int{}
	}
	d.vms.killers[name]++
	if stop := d.vms.stopping[name]; stop != nil {
		stop(errStopCut)
		cut = true
		d.log.Info("graceful stop cut short by a kill", "vm", name)
	}
	d.vms.mu.Unlock()
	unlock = d.vmLock(name)
	d.vms.mu.Lock()
	if d.vms.killers[name]--; d.vms.killers[name] == 0 {
		delete(d.vms.killers, name)
	}
	d.vms.mu.Unlock()
	return unlock, cut
}

// gracefulStop registers the graceful stop of the named VM (its lock
// held) for killLock to cut, and returns its context: cancelled with
// errStopCut by a kill, also one that asked just before the stop
// began. done unregisters it.
func (d *Daemon) gracefulStop(name string) (ctx context.Context, done func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	d.vms.mu.Lock()
	if d.vms.stopping == nil {
		d.vms.stopping = map[string]context.CancelCauseFunc{}
	}
	d.vms.stopping[name] = cancel
	if d.vms.killers[name] > 0 {
		cancel(errStopCut)
	}
	d.vms.mu.Unlock()
	return ctx, func() {
		d.vms.mu.Lock()
		delete(d.vms.stopping, name)
		d.vms.mu.Unlock()
		cancel(nil)
	}
}

// killWaiting reports whether a kill waits for the named VM's lock.
func (d *Daemon) killWaiting(name string) bool {
	d.vms.mu.Lock()
	defer d.vms.mu.Unlock()
	return d.vms.killers[name] > 0
}

// stopVMLocked shuts a VM down gracefully (the guest syncs and powers
// off; after 30 s it is killed), or kills it at once. A kill that comes
// while a graceful stop runs (killLock) turns it into a kill at once.
func (d *Daemon) stopVMLocked(ctx context.Context, v api.VM, kill bool) (*api.VM, error) {
	ev := vm.EvStop
	if kill {
		ev = vm.EvKill
	}
	graceful := context.Background()
	if !kill {
		var done func()
		graceful, done = d.gracefulStop(v.Name)
		defer done()
	}
	if vm.State(v.State) == vm.Paused && !kill {
		// The guest must run to sync and power off; if it cannot be
		// thawed, the stop ends in the kill at the deadline.
		if p, err := d.pauser(v); err == nil {
			rctx, cancel := context.WithTimeout(graceful, 10*time.Second)
			if p.Resume(rctx) == nil {
				d.agentPaused(v.ID, false)
			}
			cancel()
		}
	}
	if err := d.transition(ctx, &v, ev, v.PID, ""); err != nil {
		return nil, err
	}
	m := d.machine(v.ID)
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
	viaAgent := !kill && d.agentPowerOff(sctx, v) == nil
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
		d.endConsole(v.Dir)
	}
	d.dropAgent(v.ID)
	d.setMachine(v.ID, nil)
	if vm.State(v.State).Live() {
		if err := d.transition(ctx, &v, vm.EvExited, 0, ""); err != nil {
			return nil, err
		}
	}
	d.store.SetVMState(ctx, v.Name, v.State, 0, "")
	v.PID = 0
	d.detachNet(ctx, v)
	d.log.Info("vm stopped", "vm", v.Name, "killed", kill)
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

// reconcileVMs runs at daemon start: a VM whose VMM died while the daemon
// was away is marked stopped; one whose VMM still runs keeps its state
// (the daemon can stop it by pid); directories without a record go.
func (d *Daemon) reconcileVMs(ctx context.Context) error {
	vms, err := d.store.VMs(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, v := range vms {
		known[v.ID] = true
		if !vm.State(v.State).Live() {
			d.stopMounts(ctx, v.Name) // a daemon killed mid-stop may have left them
			continue
		}
		alive := vmmProcess(v.PID, v.Dir)
		switch {
		case v.State == string(vm.Starting):
			// The daemon died while the VM booted: nobody saw it
			// become ready, and its pid may not even be recorded. Stop
			// every VMM of this VM and start over cleanly.
			for _, pid := range vmmProcesses(v.Dir) {
				killPID(context.Background(), pid, v.Dir, true)
			}
			if err := d.transition(ctx, &v, vm.EvFail, 0, "interrupted: bangerd stopped while the VM was starting; start it again"); err != nil {
				return err
			}
			d.log.Info("vm start interrupted", "vm", v.Name)
		case alive:
			// Adopt the VMM again: stop, pause and the VM's own
			// power-off are noticed as if this daemon had started it.
			m, err := d.attach(ctx, v)
			if err != nil {
				d.log.Warn("vm still running, but its VMM does not answer: it can be killed, not stopped gracefully", "vm", v.Name, "pid", v.PID, "err", err)
				continue
			}
			d.setMachine(v.ID, m)
			go d.watchExit(v, m)
			d.adoptMounts(v)
			if v.State == string(vm.Running) {
				// A daemon killed while it snapshotted this VM left it
				// frozen: thaw it (a running guest does not mind), and
				// release a command held for a template that was never
				// finished.
				if p, ok := m.(vmm.Pauser); ok {
					p.Resume(ctx)
				}
				d.jobs.Add(1)
				go func(v api.VM) {
					defer d.jobs.Done()
					d.agentOp(d.jobCtx, v, "release")
				}(v)
			}
			if v.State == string(vm.Paused) {
				// The record says paused: make sure the VMM agrees (the
				// daemon may have died between a resume and its record).
				if p, ok := m.(vmm.Pauser); ok {
					if err := p.Pause(ctx); err != nil {
						d.log.Warn("vm recorded as paused could not be paused again", "vm", v.Name, "err", err)
					}
				}
			}
			d.log.Info("vm still running", "vm", v.Name, "pid", v.PID)
		default:
			if err := d.transition(ctx, &v, vm.EvExited, 0, ""); err != nil {
				return err
			}
			d.log.Info("vm found stopped", "vm", v.Name)
		}
	}
	return removeLeftovers(d, d.layout.VMsDir(), known)
}

func (d *Daemon) handleRemoveVM(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	force := r.URL.Query().Get("force") == "1"
	var unlock func()
	if force {
		unlock, _ = d.killLock(name) // it kills: it waits for no stop
	} else {
		unlock = d.vmLock(name)
	}
	defer unlock()
	v, err := d.store.VM(r.Context(), name)
	if err != nil {
		return vmHint(err)
	}
	if vm.State(v.State).Live() && !force {
		return fmt.Errorf("%w: VM %q is %s: stop it first (`banger vm stop %s`) or use `banger vm rm -f %s`", errConflict, name, v.State, name, name)
	}
	if err := d.removeVMLocked(r.Context(), v); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

// handlePruneVMs removes every VM that is not live (created, stopped or
// in error) and returns their names.
func (d *Daemon) handlePruneVMs(w http.ResponseWriter, r *http.Request) error {
	vms, err := d.store.VMs(r.Context())
	if err != nil {
		return err
	}
	removed := []string{}
	for _, v := range vms {
		unlock := d.vmLock(v.Name)
		cur, err := d.store.VM(r.Context(), v.Name)
		if err == nil && !vm.State(cur.State).Live() {
			if _, err := d.store.DeleteVM(r.Context(), cur.Name); err == nil {
				d.removeNet(cur)
				os.RemoveAll(cur.Dir)
				removed = append(removed, cur.Name)
			}
		}
		unlock()
	}
	d.log.Info("vms pruned", "count", len(removed))
	writeJSON(w, http.StatusOK, removed)
	return nil
}
