package integration

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// guestUptime is the guest's own idea of how long it has run.
func (in *instance) guestUptime(name string) float64 {
	in.t.Helper()
	out := in.ok("vm", "exec", name, "--", "cat", "/proc/uptime")
	f, err := strconv.ParseFloat(strings.Fields(out)[0], 64)
	if err != nil {
		in.t.Fatalf("/proc/uptime: %q", out)
	}
	return f
}

// TestVMPauseResume freezes a VM under QEMU: the guest's clock stops
// while it is paused, the agent refuses politely, the state survives a
// daemon restart, and a paused VM still stops gracefully.
func TestVMPauseResume(t *testing.T) {
	in := newInstance(t)
	vmFixtures(t, in)
	in.ok("vm", "create", "--name", "pz", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--network", "none", "--vmm", "qemu")
	var v vmJSON
	in.jsonOut(&v, "vm", "show", "pz", "--json")
	pid := v.PID

	before, wall := in.guestUptime("pz"), time.Now()
	in.ok("vm", "pause", "pz")
	in.jsonOut(&v, "vm", "show", "pz", "--json")
	if v.State != "paused" || v.PID != pid {
		t.Fatalf("after pause: state %s pid %d, want paused %d", v.State, v.PID, pid)
	}
	in.fails("VM \"pz\" is paused: resume it with `banger vm resume pz`", "vm", "exec", "pz", "--", "true")
	in.fails("cannot pause a VM that is paused: only a running VM can be paused", "vm", "pause", "pz")
	if !strings.Contains(in.ok("vm", "ls"), "paused") {
		t.Error("vm ls does not show the paused state")
	}
	// A daemon restart keeps it paused and adopted.
	in.ok("daemon", "stop")
	time.Sleep(3 * time.Second)
	in.jsonOut(&v, "vm", "show", "pz", "--json")
	if v.State != "paused" || v.PID != pid || !processAlive(pid) {
		t.Fatalf("after a daemon restart: state %s pid %d, want paused %d", v.State, v.PID, pid)
	}
	in.ok("vm", "resume", "pz")
	after, elapsed := in.guestUptime("pz"), time.Since(wall).Seconds()
	// The guest ran for the exec calls and the commands around the
	// pause, not for the 3 s it was frozen.
	ran := after - before
	t.Logf("the guest's clock advanced %.2f s while %.2f s passed on the host", ran, elapsed)
	if ran > elapsed-2.5 {
		t.Errorf("the guest's clock advanced %.1f s of %.1f s wall: it was not frozen", ran, elapsed)
	}
	in.fails("cannot resume a VM that is running: it is not paused", "vm", "resume", "pz")

	// A paused VM stops gracefully: thawed, then synced and powered off.
	in.ok("vm", "pause", "pz")
	start := time.Now()
	in.ok("vm", "stop", "pz")
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("stopping a paused VM took %s: it was killed at the deadline, not shut down", took)
	}
	in.jsonOut(&v, "vm", "show", "pz", "--json")
	if v.State != "stopped" || processAlive(pid) {
		t.Errorf("after stop: state %s, VMM alive %v", v.State, processAlive(pid))
	}
	in.fails("cannot pause a VM that is stopped: only a running VM can be paused", "vm", "pause", "pz")
}
