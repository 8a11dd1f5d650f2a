package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/kernel"
	"banger/internal/paths"
	"banger/internal/testenv"
)

// memVMJSON is a VM as `vm show --json` has it, with its memory.
type memVMJSON struct {
	vmJSON
	Memory *struct {
		Snapshot         string `json:"snapshot"`
		SharedBytes      int64  `json:"shared_bytes"`
		OwnBytes         int64  `json:"own_bytes"`
		GuestOwnBytes    int64  `json:"guest_own_bytes"`
		CgroupBytes      int64  `json:"cgroup_bytes"`
		CgroupLimitBytes int64  `json:"cgroup_limit_bytes"`
		OOMKills         uint64 `json:"oom_kills"`
	} `json:"memory"`
}

// useJSON is a snapshot's users as `snapshot show --json` has them.
type useJSON struct {
	InUse  int      `json:"in_use"`
	UsedBy []string `json:"used_by"`
	Dir    string   `json:"dir"`
	Files  []struct {
		Role      string `json:"role"`
		SizeBytes int64  `json:"size_bytes"`
		DiskBytes int64  `json:"disk_bytes"`
	} `json:"files"`
}

// mapsOf is the lines of pid's /proc/PID/maps that name path.
func mapsOf(pid int, path string) []string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, path) {
			out = append(out, l)
		}
	}
	return out
}

// TestForksShareMemory forks five VMs from one snapshot of a VM that
// holds a file in memory (a tmpfs) and on disk, and checks what
// copy-on-write restores promise: each fork sees the source's files and
// its own writes only; its QEMU maps the snapshot's memory file private
// and has no RAM file of its own; the snapshot's bytes never change;
// `vm show` and `snapshot show` say who shares what; a fork's own
// snapshot holds what it wrote in memory; a fork stopped and started
// keeps its writes; and `snapshot rm` while forks run removes the
// snapshot, leaves them running, and its file goes with the last.
func TestForksShareMemory(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	vmFixtures(t, in)
	l, _ := paths.New(in.home)
	in.coldVM("src", "512M", "none")
	in.ok("vm", "exec", "src", "--", "sh", "-c", "mkdir -p /t && mount -t tmpfs tmpfs /t && echo src-mem > /t/m && dd if=/dev/urandom of=/t/big bs=1M count=16 2>/dev/null")
	var s1 useJSON
	in.jsonOut(&s1, "vm", "snapshot", "src", "--name", "s1", "--json")
	mem := filepath.Join(s1.Dir, "memory")
	sum, err := kernel.HashFile(mem)
	if err != nil {
		t.Fatal(err)
	}
	in.ok("vm", "fork", "s1", "--name", "f", "-n", "5")

	forks := []string{"f-1", "f-2", "f-3", "f-4", "f-5"}
	for _, f := range forks {
		in.ok("vm", "exec", f, "--", "sh", "-c", "echo "+f+" > /t/own && echo "+f+" > /root/own && sync")
	}
	shown := map[string]memVMJSON{}
	for _, f := range forks {
		if out := in.ok("vm", "exec", f, "--", "cat", "/root/marker", "/t/m", "/root/own", "/t/own"); out != "from-src\nsrc-mem\n"+f+"\n"+f+"\n" {
			t.Errorf("%s sees %q, want the source's files and its own writes only", f, out)
		}
		var v memVMJSON
		in.jsonOut(&v, "vm", "show", f, "--json")
		shown[f] = v
		maps := mapsOf(v.PID, mem)
		if len(maps) == 0 {
			t.Errorf("%s's QEMU does not map the snapshot's memory file", f)
		}
		for _, m := range maps {
			if strings.Fields(m)[1] != "rw-p" {
				t.Errorf("%s maps the snapshot's memory file shared: %s", f, m)
			}
		}
		if _, err := os.Stat(l.RAMFile(filepath.Base(v.Dir))); err == nil {
			t.Errorf("%s has a RAM file of its own", f)
		}
		m := v.Memory
		if m == nil || m.Snapshot != "s1" || m.SharedBytes <= 0 || m.GuestOwnBytes <= 0 || m.OwnBytes < m.GuestOwnBytes || m.CgroupLimitBytes != (512+192)<<20 {
			t.Errorf("%s's memory: %+v", f, m)
		} else {
			t.Logf("%s: %s shared with s1, %s own (guest %s), cgroup %s", f, mib(m.SharedBytes), mib(m.OwnBytes), mib(m.GuestOwnBytes), mib(m.CgroupBytes))
		}
	}
	if out := in.ok("vm", "show", "f-1"); !strings.Contains(out, "shared with snapshot s1") || !strings.Contains(out, "OOM kills") {
		t.Errorf("vm show f-1 does not say where its memory goes:\n%s", out)
	}
	var src memVMJSON
	in.jsonOut(&src, "vm", "show", "src", "--json")
	if src.Memory == nil || src.Memory.Snapshot != "" || src.Memory.SharedBytes != 0 || src.Memory.GuestOwnBytes < 16<<20 {
		t.Errorf("the booted source's memory: %+v", src.Memory)
	}
	var use useJSON
	in.jsonOut(&use, "snapshot", "show", "s1", "--json")
	if use.InUse != 5 || strings.Join(use.UsedBy, ",") != strings.Join(forks, ",") {
		t.Errorf("snapshot s1 in use by %d: %v", use.InUse, use.UsedBy)
	}
	if out := in.ok("snapshot", "show", "s1"); !strings.Contains(out, "5 running VMs (f-1, f-2, f-3, f-4, f-5) map its memory") {
		t.Errorf("snapshot show s1:\n%s", out)
	}

	// A fork's snapshot holds what it wrote in memory: its pages come
	// through QEMU's stream, split into a memory file like any other;
	// also after a daemon restart, which finds the forks' QEMUs again.
	in.ok("daemon", "stop")
	var s2 useJSON
	in.jsonOut(&s2, "vm", "snapshot", "f-1", "--name", "s2", "--json")
	for _, f := range s2.Files {
		if f.Role == "state" && f.SizeBytes > 1<<20 {
			t.Errorf("f-1's snapshot's device state holds %d bytes: guest RAM was left in it", f.SizeBytes)
		}
		if f.Role == "memory" && f.SizeBytes != 512<<20 {
			t.Errorf("f-1's snapshot's memory file is %d bytes", f.SizeBytes)
		}
	}
	in.jsonOut(&use, "snapshot", "show", "s1", "--json")
	if use.InUse != 5 {
		t.Errorf("s1 in use by %d after a daemon restart", use.InUse)
	}
	in.ok("vm", "fork", "s2", "--name", "g")
	if out := in.ok("vm", "exec", "g", "--", "cat", "/t/m", "/t/own", "/root/own"); out != "src-mem\nf-1\nf-1\n" {
		t.Errorf("a fork of f-1's snapshot sees %q", out)
	}
	if cmp := in.ok("vm", "exec", "g", "--", "sh", "-c", "md5sum /t/big"); cmp != in.ok("vm", "exec", "src", "--", "sh", "-c", "md5sum /t/big") {
		t.Errorf("the 16 MiB in memory differ after a fork of a fork: %s", cmp)
	}

	// Stop and start: a cold boot from the fork's own disk, with its
	// writes; its memory its own from then on.
	in.ok("vm", "stop", "f-2")
	in.ok("vm", "start", "f-2")
	if out := in.ok("vm", "exec", "f-2", "--", "cat", "/root/marker", "/root/own"); out != "from-src\nf-2\n" {
		t.Errorf("f-2 after stop and start: %q", out)
	}
	var f2 memVMJSON
	in.jsonOut(&f2, "vm", "show", "f-2", "--json")
	if f2.Memory == nil || f2.Memory.Snapshot != "" || len(mapsOf(f2.PID, mem)) != 0 {
		t.Errorf("f-2 after a cold boot still maps the snapshot: %+v", f2.Memory)
	}
	in.jsonOut(&use, "snapshot", "show", "s1", "--json")
	if use.InUse != 4 {
		t.Errorf("s1 in use by %d after f-2 booted cold, want 4: %v", use.InUse, use.UsedBy)
	}
	if got, err := kernel.HashFile(mem); err != nil || got != sum {
		t.Errorf("the snapshot's memory file changed while forks ran from it (%v)", err)
	}

	// Removing it while forks run: gone at once from the list; the forks
	// run on, mapping the removed file, and it goes with the last.
	r := in.run("snapshot", "rm", "s1")
	if r.code != 0 || r.stdout != "s1\n" || !strings.Contains(r.stderr, "s1: removed; 4 running VMs (f-1, f-3, f-4, f-5) still map its memory file") {
		t.Errorf("snapshot rm s1 in use: %+v", r)
	}
	if _, err := os.Stat(s1.Dir); !os.IsNotExist(err) {
		t.Errorf("the snapshot's directory is still there: %v", err)
	}
	for _, sn := range in.snapshots() {
		if sn.Name == "s1" {
			t.Errorf("s1 is still listed")
		}
	}
	var f3 memVMJSON
	in.jsonOut(&f3, "vm", "show", "f-3", "--json")
	if maps := mapsOf(f3.PID, mem); len(maps) == 0 || !strings.HasSuffix(maps[0], "(deleted)") {
		t.Errorf("f-3's mapping of the removed file: %v", maps)
	}
	if f3.Memory == nil || !strings.HasSuffix(f3.Memory.Snapshot, " (removed)") {
		t.Errorf("f-3's memory after s1 was removed: %+v", f3.Memory)
	}
	for _, f := range []string{"f-1", "f-3", "f-4", "f-5"} {
		if out := in.ok("vm", "exec", f, "--", "sh", "-c", "cat /t/m && md5sum /t/big >/dev/null && echo ok"); out != "src-mem\nok\n" {
			t.Errorf("%s after its snapshot was removed: %q", f, out)
		}
	}
	in.ok("vm", "rm", "-f", "src", "g", "f-1", "f-2", "f-3", "f-4", "f-5")
	for _, pid := range homeProcs(in.home) {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid)); strings.Contains(string(b), l.SnapshotsDir()) {
			t.Errorf("process %d still maps a snapshot file", pid)
		}
	}
	in.ok("snapshot", "rm", "s2")
}

// TestSnapshotDamagedUnderForks cuts a snapshot's memory file short
// while forks of it run: new forks are refused as for any damaged
// snapshot; each running fork either runs on or, once it touches a page
// that was cut off, is in error with a line that says why; the host and
// the source go on.
func TestSnapshotDamagedUnderForks(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	vmFixtures(t, in)
	in.coldVM("src", "256M", "none")
	in.ok("vm", "exec", "src", "--", "sh", "-c", "mkdir -p /t && mount -t tmpfs tmpfs /t && dd if=/dev/urandom of=/t/big bs=1M count=32 2>/dev/null")
	var sn useJSON
	in.jsonOut(&sn, "vm", "snapshot", "src", "--name", "s", "--json")
	in.ok("vm", "fork", "s", "--name", "f", "-n", "2")
	if err := os.Truncate(filepath.Join(sn.Dir, "memory"), 4096); err != nil {
		t.Fatal(err)
	}
	in.fails("snapshot \"s\": its memory file is 4096 bytes", "vm", "fork", "s", "--name", "x")
	var wg sync.WaitGroup
	for _, f := range []string{"f-1", "f-2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Reading the 32 MiB touches pages that are gone.
			in.run("vm", "exec", f, "--", "md5sum", "/t/big")
		}()
	}
	wg.Wait()
	for _, f := range []string{"f-1", "f-2"} {
		var v vmJSON
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			in.jsonOut(&v, "vm", "show", f, "--json")
			if v.State != "running" || time.Now().After(deadline) {
				break
			}
			if in.run("vm", "exec", f, "--", "true").code == 0 {
				break
			}
		}
		switch v.State {
		case "running":
			t.Logf("%s runs on", f)
		case "error":
			if !strings.Contains(v.Error, `the memory file of snapshot "s", which this VM's memory maps, was changed while it ran (4096 bytes`) {
				t.Errorf("%s's error does not say why: %s", f, v.Error)
			}
			t.Logf("%s: %s", f, v.Error)
		default:
			t.Errorf("%s after its snapshot was cut short: %+v", f, v)
		}
	}
	if out := in.ok("vm", "exec", "src", "--", "cat", "/root/marker"); out != "from-src\n" {
		t.Errorf("the source after its snapshot was damaged: %q", out)
	}
	in.ok("vm", "rm", "-f", "src", "f-1", "f-2")
	in.ok("snapshot", "rm", "s")
}

// TestForkMemoryWithinItsLimit: a fork whose snapshot's pages are not in
// the page cache reads them in (charged to its cgroup, as the first to
// touch them) and then writes every one (copies, its own): its cgroup
// holds guest RAM plus overhead all the same, for the kernel reclaims
// the clean file pages before it would kill anything.
func TestForkMemoryWithinItsLimit(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	vmFixtures(t, in)
	in.coldVM("src", "256M", "none")
	in.ok("vm", "exec", "src", "--", "sh", "-c", "mkdir -p /t && mount -t tmpfs -o size=200m tmpfs /t && dd if=/dev/urandom of=/t/big bs=1M count=160 2>/dev/null")
	var sn useJSON
	in.jsonOut(&sn, "vm", "snapshot", "src", "--name", "s", "--json")
	in.ok("vm", "rm", "-f", "src")
	// Out of the page cache: the fork is the first to read the pages.
	f, err := os.Open(filepath.Join(sn.Dir, "memory"))
	if err != nil {
		t.Fatal(err)
	}
	f.Sync()
	if err := unixFadviseDontNeed(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	in.ok("vm", "fork", "s", "--name", "f")
	in.ok("vm", "exec", "f", "--", "sh", "-c", "md5sum /t/big >/dev/null && dd if=/dev/zero of=/t/big bs=1M count=160 conv=notrunc 2>/dev/null && sync")
	var v memVMJSON
	in.jsonOut(&v, "vm", "show", "f", "--json")
	m := v.Memory
	if v.State != "running" || m == nil {
		t.Fatalf("the fork after rewriting its memory: %+v", v)
	}
	t.Logf("fork: %s shared, %s own (guest %s); cgroup %s of %s, %d OOM kills", mib(m.SharedBytes), mib(m.OwnBytes), mib(m.GuestOwnBytes), mib(m.CgroupBytes), mib(m.CgroupLimitBytes), m.OOMKills)
	if m.OOMKills != 0 || m.CgroupBytes > m.CgroupLimitBytes || m.GuestOwnBytes < 160<<20 {
		t.Errorf("the fork's memory: %+v", m)
	}
	in.ok("vm", "exec", "f", "--", "true")
	in.ok("vm", "rm", "-f", "f")
	in.ok("snapshot", "rm", "s")
}

func unixFadviseDontNeed(f *os.File) error {
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// TestForksAsAnotherUser: alice, an unprivileged member of group banger,
// snapshots and forks her VM: her forks share its memory and her vm show
// and snapshot show say so; root's fork of her snapshot counts as a
// user of it without being named to her; bob sees none of it.
func TestForksAsAnotherUser(t *testing.T) {
	testenv.RequireRoot(t)
	alice, bob := testUser(t, "banger-alice"), testUser(t, "banger-bob")
	in := newInstance(t)
	vmFixtures(t, in)
	in.shareWithGroup()
	as := func(u hostUser, args ...string) string {
		t.Helper()
		r := in.runAs(u, args...)
		if r.code != 0 {
			t.Fatalf("%s: banger %s: %s", u.name, strings.Join(args, " "), r.stderr)
		}
		return r.stdout
	}
	as(alice, "vm", "create", "--name", "a", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--network", "none", "--cold")
	as(alice, "vm", "exec", "a", "--", "sh", "-c", "mkdir -p /t && mount -t tmpfs tmpfs /t && echo hers > /t/m")
	as(alice, "vm", "snapshot", "a", "--name", "as")
	as(alice, "vm", "fork", "as", "--name", "af", "-n", "2")
	for _, f := range []string{"af-1", "af-2"} {
		if out := as(alice, "vm", "exec", f, "--", "cat", "/t/m"); out != "hers\n" {
			t.Errorf("%s: %q", f, out)
		}
		if out := as(alice, "vm", "show", f); !strings.Contains(out, "shared with snapshot as") {
			t.Errorf("alice's vm show %s:\n%s", f, out)
		}
	}
	in.ok("vm", "fork", "as", "--name", "rootf") // root may fork anyone's
	var use useJSON
	if err := json.Unmarshal([]byte(as(alice, "snapshot", "show", "as", "--json")), &use); err != nil {
		t.Fatal(err)
	}
	if use.InUse != 3 || strings.Join(use.UsedBy, ",") != "af-1,af-2" {
		t.Errorf("alice's snapshot show: in use by %d, %v (root's fork counted, not named)", use.InUse, use.UsedBy)
	}
	in.jsonOut(&use, "snapshot", "show", "as", "--json")
	if use.InUse != 3 || strings.Join(use.UsedBy, ",") != "af-1,af-2,rootf" {
		t.Errorf("root's snapshot show: in use by %d, %v", use.InUse, use.UsedBy)
	}
	for _, args := range [][]string{{"snapshot", "show", "as"}, {"vm", "show", "af-1"}, {"vm", "fork", "as"}, {"snapshot", "rm", "as"}} {
		if r := in.runAs(bob, args...); r.code == 0 || !strings.Contains(r.stderr, "of yours") {
			t.Errorf("bob: banger %s: %d %q", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	if r := in.runAs(bob, "snapshot", "ls", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("bob's snapshot ls: %q", r.stdout)
	}
	r := in.runAs(alice, "snapshot", "rm", "as")
	if r.code != 0 || !strings.Contains(r.stderr, "as: removed; 3 running VMs (af-1, af-2) still map its memory file") {
		t.Errorf("alice's snapshot rm in use: %+v", r)
	}
	as(alice, "vm", "exec", "af-1", "--", "cat", "/t/m")
	as(alice, "vm", "rm", "-f", "a", "af-1", "af-2")
	in.ok("vm", "rm", "-f", "rootf")
}
