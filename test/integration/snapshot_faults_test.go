package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/paths"
	"banger/internal/store"
	"banger/internal/testenv"
)

// coldVM makes a small busybox VM that boots (no template) and has
// written a marker file.
func (in *instance) coldVM(name, memory, network string) vmJSON {
	in.t.Helper()
	var v vmJSON
	in.jsonOut(&v, "vm", "create", "--name", name, "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", memory,
		"--disk-size", "128M", "--network", network, "--vmm", "qemu", "--cold", "--json")
	in.ok("vm", "exec", name, "--", "sh", "-c", "mkdir -p /root && echo from-"+name+" > /root/marker && sync")
	return v
}

// snapshotDirs lists the instance's snapshot directories.
func (in *instance) snapshotDirs() []string {
	l, _ := paths.New(in.home)
	m, _ := filepath.Glob(filepath.Join(l.SnapshotsDir(), "*"))
	return m
}

// snapshots lists the instance's snapshots and templates.
func (in *instance) snapshots() []snapshotJSON {
	var sns []snapshotJSON
	in.jsonOut(&sns, "snapshot", "ls", "--json")
	return sns
}

// vmNames lists the instance's VMs.
func (in *instance) vmNames() []string {
	var vs []vmJSON
	in.jsonOut(&vs, "vm", "ls", "--json")
	var names []string
	for _, v := range vs {
		names = append(names, v.Name)
	}
	return names
}

// noForkLeft checks that a refused fork made nothing: no VM, no
// directory, no guest RAM file beyond the source's, no VMM.
func (in *instance) noForkLeft(name string, vmsBefore []string, ramBefore int) {
	in.t.Helper()
	if got := in.vmNames(); strings.Join(got, ",") != strings.Join(vmsBefore, ",") {
		in.t.Errorf("after a refused fork of %s the VMs are %v, were %v", name, got, vmsBefore)
	}
	l, _ := paths.New(in.home)
	if dirs, _ := filepath.Glob(filepath.Join(l.VMsDir(), "*")); len(dirs) != len(vmsBefore) {
		in.t.Errorf("VM directories after a refused fork: %v", dirs)
	}
	if n := len(in.ramFiles()); n != ramBefore {
		in.t.Errorf("guest RAM files after a refused fork: %v", in.ramFiles())
	}
}

// editSnapshot changes a snapshot's record with the daemon stopped (the
// next command starts it again).
func (in *instance) editSnapshot(name string, edit func(*api.Snapshot)) {
	in.t.Helper()
	in.stopDaemon()
	l, _ := paths.New(in.home)
	st, err := store.Open(context.Background(), l.Database())
	if err != nil {
		in.t.Fatal(err)
	}
	defer st.Close()
	sn, err := st.Snapshot(context.Background(), name)
	if err != nil {
		in.t.Fatal(err)
	}
	edit(&sn)
	if err := st.UpdateSnapshot(context.Background(), sn); err != nil {
		in.t.Fatal(err)
	}
}

// TestSnapshotBadInput: a snapshot of a VM that does not run, and forks
// of a truncated, a changed and a VMM-version-mismatched snapshot, each
// refused with one line that says what to do, and nothing made.
func TestSnapshotBadInput(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	vmFixtures(t, in)
	in.coldVM("src", "256M", "none")
	for _, n := range []string{"trunc", "changed", "oldqemu"} {
		in.ok("vm", "snapshot", "src", "--name", n)
	}
	var shown snapshotJSON
	in.jsonOut(&shown, "snapshot", "show", "trunc", "--json")
	vms, ram := in.vmNames(), len(in.ramFiles())

	if err := os.Truncate(filepath.Join(shown.Dir, "memory"), 4096); err != nil {
		t.Fatal(err)
	}
	r := in.fails("snapshot damaged: snapshot \"trunc\": its memory file is 4096 bytes", "vm", "fork", "trunc", "--name", "x1")
	if !strings.Contains(r.stderr, "banger snapshot rm trunc") {
		t.Errorf("the error does not say what to do: %s", r.stderr)
	}
	in.noForkLeft("trunc", vms, ram)

	in.jsonOut(&shown, "snapshot", "show", "changed", "--json")
	f, err := os.OpenFile(filepath.Join(shown.Dir, "state"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xff, 0xfe, 0xfd}, 100)
	f.Close()
	in.fails("snapshot \"changed\": its state file changed since it was written", "vm", "fork", "changed", "--name", "x2")
	in.noForkLeft("changed", vms, ram)

	in.editSnapshot("oldqemu", func(sn *api.Snapshot) { sn.VMMVersion = "6.2.0" })
	r = in.fails("snapshot \"oldqemu\" was made by qemu 6.2.0, this host has qemu ", "vm", "fork", "oldqemu", "--name", "x3")
	if !strings.Contains(r.stderr, "take the snapshot again") {
		t.Errorf("the version error does not say what to do: %s", r.stderr)
	}
	in.noForkLeft("oldqemu", vms, ram)

	// Removing the damaged snapshots works, and the source was never
	// touched (it ran through a daemon restart, too).
	in.ok("snapshot", "rm", "trunc", "changed", "oldqemu")
	if dirs := in.snapshotDirs(); len(dirs) != 0 {
		t.Errorf("snapshot directories left: %v", dirs)
	}
	if out := in.ok("vm", "exec", "src", "--", "cat", "/root/marker"); out != "from-src\n" {
		t.Errorf("source's marker: %q", out)
	}
	in.ok("vm", "stop", "src")
	in.fails("cannot snapshot a VM that is stopped: start it with `banger vm start src`", "vm", "snapshot", "src")
	in.fails("cannot fork a VM that is stopped", "vm", "fork", "src")
	in.fails("no snapshot or VM named \"nope\"", "vm", "fork", "nope")
	if dirs := in.snapshotDirs(); len(dirs) != 0 {
		t.Errorf("snapshot directories left: %v", dirs)
	}
}

// TestSnapshotDiskFull fills the disk under a snapshot: it fails with
// one line, the source runs on (not frozen), and no snapshot, file or
// record is left; with space again, the same snapshot works.
func TestSnapshotDiskFull(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	in.smallDisk(t, "1200M")
	vmFixtures(t, in)
	in.coldVM("src", "256M", "none")
	// Something for the memory copy to hold: 64 MiB of random bytes.
	in.ok("vm", "exec", "src", "--", "sh", "-c", "mkdir -p /t && mount -t tmpfs tmpfs /t && dd if=/dev/urandom of=/t/f bs=1M count=64 2>/dev/null")
	up := in.guestUptime("src")
	var fs syscall.Statfs_t
	if err := syscall.Statfs(in.home, &fs); err != nil {
		t.Fatal(err)
	}
	// Leave 16 MiB free: less than the guest's memory holds.
	filler := in.path("filler")
	if free := int64(fs.Bavail) * fs.Bsize; free > 16<<20 {
		if out, err := exec.Command("fallocate", "-l", strconv.FormatInt(free-16<<20, 10), filler).CombinedOutput(); err != nil {
			t.Fatalf("fallocate: %v %s", err, out)
		}
	}
	r := in.fails("no space left on device", "vm", "snapshot", "src", "--name", "full")
	if !strings.Contains(r.stderr, "the VM runs on; nothing was kept") || !strings.Contains(r.stderr, "free") {
		t.Errorf("the error does not say what happened and what to do: %s", r.stderr)
	}
	var v vmJSON
	in.jsonOut(&v, "vm", "show", "src", "--json")
	if v.State != "running" {
		t.Errorf("source after the failed snapshot: %s", v.State)
	}
	time.Sleep(500 * time.Millisecond)
	if after := in.guestUptime("src"); after <= up {
		t.Errorf("the source's guest is frozen: uptime %.2f then %.2f", up, after)
	}
	if sns := in.snapshots(); len(sns) != 0 {
		t.Errorf("snapshots after the failure: %+v", sns)
	}
	if dirs := in.snapshotDirs(); len(dirs) != 0 {
		t.Errorf("snapshot directories left: %v", dirs)
	}
	os.Remove(filler)
	var sn snapshotJSON
	in.jsonOut(&sn, "vm", "snapshot", "src", "--name", "full", "--json")
	if sn.State != "ready" {
		t.Errorf("snapshot with space again: %+v", sn)
	}
	in.ok("vm", "rm", "-f", "src")
	in.ok("snapshot", "rm", "full")
}

// TestDaemonKilledMidSnapshotAndRestore kills bangerd with SIGKILL while
// it writes a snapshot, and again while it restores a fork: the next
// daemon removes the half-written snapshot, thaws and adopts the
// source, records the fork as interrupted (its VMM and RAM file gone),
// and both verbs work afterwards.
func TestDaemonKilledMidSnapshotAndRestore(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	vmFixtures(t, in)
	in.coldVM("src", "1G", "none")
	// A memory copy that takes long enough to be caught in the middle.
	in.ok("vm", "exec", "src", "--", "sh", "-c", "mkdir -p /t && mount -t tmpfs -o size=600m tmpfs /t && dd if=/dev/urandom of=/t/f bs=1M count=384 2>/dev/null")
	l, _ := paths.New(in.home)

	killWhen := func(what string, seen func() bool, args ...string) {
		t.Helper()
		pid := in.daemonPID()
		cmd := in.cli(args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Minute)
		for !seen() {
			if time.Now().After(deadline) {
				t.Fatalf("never saw the %s under way", what)
			}
			time.Sleep(time.Millisecond)
		}
		syscall.Kill(pid, syscall.SIGKILL)
		if cmd.Wait() == nil {
			t.Fatalf("%s: the command succeeded although its daemon was killed", what)
		}
		for processAlive(pid) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	memoryFiles := func() []string {
		m, _ := filepath.Glob(filepath.Join(l.SnapshotsDir(), "*", "memory"))
		return m
	}
	killWhen("snapshot", func() bool { return len(memoryFiles()) > 0 }, "vm", "snapshot", "src", "--name", "half")
	// The next command starts a daemon, which cleans up.
	var v vmJSON
	in.jsonOut(&v, "vm", "show", "src", "--json")
	if v.State != "running" {
		t.Errorf("source after the killed snapshot: %+v", v)
	}
	up := in.guestUptime("src")
	time.Sleep(500 * time.Millisecond)
	if after := in.guestUptime("src"); after <= up {
		t.Errorf("the source's guest is still frozen: uptime %.2f then %.2f", up, after)
	}
	if sns := in.snapshots(); len(sns) != 0 {
		t.Errorf("snapshots after the kill: %+v", sns)
	}
	if dirs := in.snapshotDirs(); len(dirs) != 0 {
		t.Errorf("snapshot directories left after the kill: %v", dirs)
	}

	in.ok("vm", "snapshot", "src", "--name", "whole")
	// A restore is under way once its QEMU maps the snapshot's memory.
	killWhen("restore", func() bool { return len(in.restoringVMMs()) > 0 }, "vm", "fork", "whole", "--name", "f1")
	var f vmJSON
	in.jsonOut(&f, "vm", "show", "f1", "--json")
	if f.State != "error" || !strings.Contains(f.Error, "interrupted") || f.PID != 0 {
		t.Errorf("the fork after the killed restore: %+v", f)
	}
	if out, _ := exec.Command("pgrep", "-f", f.Dir).Output(); len(out) > 0 {
		t.Errorf("a VMM of the interrupted fork still runs: %s", out)
	}
	if ram := in.ramFiles(); len(ram) != 1 {
		t.Errorf("guest RAM files after the killed restore: %v (only the source's should be left)", ram)
	}
	in.jsonOut(&v, "vm", "show", "src", "--json")
	if v.State != "running" {
		t.Errorf("source after the killed restore: %+v", v)
	}
	in.ok("vm", "rm", "f1")
	var forks []vmJSON
	in.jsonOut(&forks, "vm", "fork", "whole", "--name", "f2", "--json")
	if out := in.ok("vm", "exec", "f2", "--", "sh", "-c", "busybox hostname; cat /root/marker"); out != "f2\nfrom-src\n" {
		t.Errorf("the fork after recovery printed %q", out)
	}
	in.ok("vm", "rm", "-f", "f2", "src")
	in.ok("snapshot", "rm", "whole")
	if left := in.ramFiles(); len(left) != 0 {
		t.Errorf("guest RAM files left: %v", left)
	}
	if left := in.taps(); len(left) != 0 {
		t.Errorf("TAP devices left: %v", left)
	}
}

// restoringVMMs lists the instance's QEMUs that map a snapshot's memory
// file copy-on-write: restored VMs, or restores under way.
func (in *instance) restoringVMMs() []int {
	var pids []int
	for _, pid := range homeProcs(in.home) {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if strings.Contains(string(b), "share=off") {
			pids = append(pids, pid)
		}
	}
	return pids
}
