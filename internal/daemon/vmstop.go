package daemon

import (
	"bytes"
	"context"
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

// stopVMLocked shuts a VM down gracefully (the guest syncs and powers
// off; after 30 s it is killed), or kills it at once.
func (d *Daemon) stopVMLocked(ctx context.Context, v api.VM, kill bool) (*api.VM, error) {
	ev := vm.EvStop
	if kill {
		ev = vm.EvKill
	}
	if vm.State(v.State) == vm.Paused && !kill {
		// The guest must run to sync and power off; if it cannot be
		// thawed, the stop ends in the kill at the deadline.
		if p, err := d.pauser(v); err == nil {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			p.Resume(rctx)
			cancel()
		}
	}
	if err := d.transition(ctx, &v, ev, v.PID, ""); err != nil {
		return nil, err
	}
	m := d.machine(v.ID)
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A graceful stop asks the agent to sync and power off; a VM whose
	// agent does not answer gets the VMM's own request (ACPI power
	// button, Ctrl-Alt-Del), and either is killed at the deadline.
	viaAgent := !kill && d.agentPowerOff(sctx, v) == nil
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
		killPID(v.PID, v.Dir, true)
	default:
		killPID(v.PID, v.Dir, kill)
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

func killPID(pid int, dir string, now bool) {
	if !vmmProcess(pid, dir) {
		return
	}
	if !now {
		syscall.Kill(pid, syscall.SIGTERM)
		for i := 0; i < 100 && vmmProcess(pid, dir); i++ {
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
				killPID(pid, v.Dir, true)
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
	unlock := d.vmLock(name)
	defer unlock()
	v, err := d.store.VM(r.Context(), name)
	if err != nil {
		return vmHint(err)
	}
	if vm.State(v.State).Live() && r.URL.Query().Get("force") != "1" {
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
