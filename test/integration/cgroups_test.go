package integration

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/cgroup"
	"banger/internal/paths"
	"banger/internal/testenv"
)

// vmGroup reads VM groups of an instance's daemon in this host's cgroup
// hierarchy, as an operator would: /sys/fs/cgroup/<ctrl>/<parent>/<id>
// on v1, /sys/fs/cgroup/<parent>/<id> on v2.
type vmGroup struct {
	t      *testing.T
	mode   cgroup.Mode
	parent string
}

func cgroupsOf(t *testing.T, in *instance) vmGroup {
	t.Helper()
	testenv.RequireRoot(t)
	mode, err := cgroup.Detect()
	testenv.Require(t, err == nil, "this host has no usable cgroups: "+errString(err))
	layout, err := paths.New(in.home)
	if err != nil {
		t.Fatal(err)
	}
	return vmGroup{t: t, mode: mode, parent: layout.CgroupParent()}
}

// rmAtEnd removes the named VMs when the test ends, failed or not,
// before the instance's daemon stops: their VMMs would run on.
func rmAtEnd(t *testing.T, in *instance, names ...string) {
	t.Cleanup(func() {
		for _, n := range names {
			in.run("vm", "rm", "-f", n)
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// dir is VM id's group directory for controller ctrl (memory, cpu, pids).
func (g vmGroup) dir(ctrl, id string) string {
	if g.mode == cgroup.V2 {
		return filepath.Join("/sys/fs/cgroup", g.parent, id)
	}
	return filepath.Join("/sys/fs/cgroup", ctrl, g.parent, id)
}

func (g vmGroup) exists(id string) bool {
	for _, c := range []string{"memory", "cpu", "pids"} {
		if _, err := os.Stat(g.dir(c, id)); err == nil {
			return true
		}
	}
	return false
}

func (g vmGroup) read(ctrl, id, file string) string {
	g.t.Helper()
	b, err := os.ReadFile(filepath.Join(g.dir(ctrl, id), file))
	if err != nil {
		g.t.Fatalf("reading VM %s's cgroup: %v", id, err)
	}
	return strings.TrimSpace(string(b))
}

// procs are the processes in VM id's group (its memory hierarchy's, on v1).
func (g vmGroup) procs(id string) []int {
	g.t.Helper()
	var out []int
	for _, f := range strings.Fields(g.read("memory", id, "cgroup.procs")) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}

// limits are VM id's memory limit in bytes, CPU quota per 100 ms period
// in µs, and pids limit, as the kernel holds them.
func (g vmGroup) limits(id string) (mem, cpu, pids int64) {
	g.t.Helper()
	num := func(s string) int64 {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			g.t.Fatalf("VM %s's cgroup: %q is not a limit", id, s)
		}
		return n
	}
	if g.mode == cgroup.V2 {
		mem = num(g.read("memory", id, "memory.max"))
		quota, period, _ := strings.Cut(g.read("cpu", id, "cpu.max"), " ")
		if period != "100000" {
			g.t.Errorf("cpu.max period %s", period)
		}
		cpu = num(quota)
	} else {
		mem = num(g.read("memory", id, "memory.limit_in_bytes"))
		if p := g.read("cpu", id, "cpu.cfs_period_us"); p != "100000" {
			g.t.Errorf("cpu.cfs_period_us %s", p)
		}
		cpu = num(g.read("cpu", id, "cpu.cfs_quota_us"))
	}
	return mem, cpu, num(g.read("pids", id, "pids.max"))
}

// TestVMCgroups: each VM's VMM (booted, or restored from a warm
// template), its virtiofsd and its console log helper run in a cgroup of
// the VM's own under the instance's parent, with the VM's limits; the
// group outlives a daemon restart with its processes, and `vm rm -f`
// leaves none.
func TestVMCgroups(t *testing.T) {
	in := newInstance(t)
	g := cgroupsOf(t, in)
	vmFixtures(t, in)
	rmAtEnd(t, in, "boot", "warm", "shared", "again")
	shape := []string{"--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--network", "none", "--vmm", "qemu", "--json"}
	var booted, restored, mounted struct {
		vmJSON
		ID     string      `json:"id"`
		Mounts []mountJSON `json:"mounts"`
	}
	in.jsonOut(&booted, append([]string{"vm", "create", "--name", "boot"}, shape...)...)
	in.jsonOut(&restored, append([]string{"vm", "create", "--name", "warm"}, shape...)...)
	if !strings.HasPrefix(restored.Origin, "template") {
		t.Errorf("the second VM of a shape was not restored from the warm template: origin %q", restored.Origin)
	}
	share := t.TempDir()
	in.jsonOut(&mounted, append([]string{"vm", "create", "--name", "shared", "-v", share + ":/mnt/s"}, shape...)...)
	if len(mounted.Mounts) != 1 || mounted.Mounts[0].PID == 0 {
		t.Fatalf("mounts %+v", mounted.Mounts)
	}

	// The limits: 256 MiB of guest memory plus 192 MiB of overhead, one
	// vCPU plus one CPU for the VMM's own threads and helpers, 160 tasks
	// (and 96 more for the mount's virtiofsd).
	for _, c := range []struct {
		name, id string
		pids     int64
		procs    []int
	}{
		{"booted", booted.ID, 160, []int{booted.PID}},
		{"restored", restored.ID, 160, []int{restored.PID}},
		{"with a mount", mounted.ID, 256, []int{mounted.PID, mounted.Mounts[0].PID}},
	} {
		mem, cpu, pids := g.limits(c.id)
		if mem != 448<<20 || cpu != 200000 || pids != c.pids {
			t.Errorf("%s: limits memory %d, CPU %d µs per 100 ms, pids %d; want %d, 200000, %d", c.name, mem, cpu, pids, 448<<20, c.pids)
		}
		in := g.procs(c.id)
		for _, pid := range c.procs {
			if !slices.Contains(in, pid) {
				t.Errorf("%s: process %d is not in the VM's cgroup (%v)", c.name, pid, in)
			}
		}
		// The console log helper too: every process but the VMM and
		// virtiofsd's (shell turned virtiofsd, and its worker).
		if len(in) < len(c.procs)+1 {
			t.Errorf("%s: processes in the VM's cgroup %v: want the console log helper besides %v", c.name, in, c.procs)
		}
	}

	// The daemon goes; the groups and what runs in them stay, and the
	// next daemon adopts them.
	in.ok("daemon", "stop")
	if !slices.Contains(g.procs(booted.ID), booted.PID) {
		t.Errorf("the VMM left its cgroup when the daemon stopped")
	}
	in.ok("vm", "exec", "boot", "--", "true") // starts the daemon again
	if mem, _, _ := g.limits(booted.ID); mem != 448<<20 || !slices.Contains(g.procs(booted.ID), booted.PID) {
		t.Errorf("after a daemon restart: memory limit %d, processes %v", mem, g.procs(booted.ID))
	}

	for _, c := range []struct{ name, id string }{{"boot", booted.ID}, {"warm", restored.ID}, {"shared", mounted.ID}} {
		in.ok("vm", "rm", "-f", c.name)
		if g.exists(c.id) {
			t.Errorf("VM %s's cgroup is left after vm rm -f", c.name)
		}
	}
	// A stop removes it too, and a start makes it again.
	in.ok("vm", "create", "--name", "again", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--network", "none", "--vmm", "qemu")
	var again struct {
		vmJSON
		ID string `json:"id"`
	}
	in.jsonOut(&again, "vm", "stop", "again", "--json")
	if g.exists(again.ID) {
		t.Errorf("the cgroup is left after vm stop")
	}
	in.ok("vm", "rm", "again")
}

// TestVMOutOfMemoryIsContained: a guest that uses all its memory pushes
// its QEMU past the cgroup's limit, and the kernel kills that QEMU and
// nothing else: the VM ends in error saying why, and another VM of the
// same daemon keeps running and answering.
//
// With the real overhead that does not happen: guest memory is bounded
// by the guest's kernel, and the overhead covers QEMU's own. So this
// daemon runs with BANGER_TEST_VM_MEMORY_OVERHEAD=1M (a test-only knob),
// a limit of guest memory plus 1 MiB: the guest's RAM (a shared file
// QEMU maps, charged to QEMU's group as the guest touches it) plus
// QEMU's own ~80 MiB cannot fit once the guest has touched most of its
// memory, which a tmpfs filled inside the guest does.
func TestVMOutOfMemoryIsContained(t *testing.T) {
	in := newInstance(t)
	in.env = append(in.env, "BANGER_TEST_VM_MEMORY_OVERHEAD=1M")
	g := cgroupsOf(t, in)
	vmFixtures(t, in)
	rmAtEnd(t, in, "calm", "hog")
	// The calm VM is larger than anything it does: it boots and idles
	// well within 512 MiB plus 1.
	base := []string{"--image", "bb", "--kernel", "k", "--vcpu", "1", "--disk-size", "128M", "--network", "none", "--vmm", "qemu", "--json"}
	var calm, hog struct {
		vmJSON
		ID string `json:"id"`
	}
	in.jsonOut(&calm, append([]string{"vm", "create", "--name", "calm", "--memory", "512M"}, base...)...)
	in.jsonOut(&hog, append([]string{"vm", "create", "--name", "hog", "--memory", "256M"}, base...)...)
	if g.exists(hog.ID) {
		if mem, _, _ := g.limits(hog.ID); mem != 257<<20 {
			t.Errorf("the hog's memory limit %d, want %d", mem, 257<<20)
		}
	} else {
		t.Errorf("the hog has no cgroup")
	}
	// Fill all the guest can spare: its QEMU goes past the limit on the
	// way. The exec ends when the VM does; its result does not matter.
	in.run("vm", "exec", "hog", "--", "sh", "-c",
		`mkdir -p /t && mount -t tmpfs -o size=100% tmpfs /t && avail=$(awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo) && dd if=/dev/zero of=/t/fill bs=1M count=$((avail - 8))`)
	deadline := time.Now().Add(time.Minute)
	var v vmJSON
	for in.jsonOut(&v, "vm", "show", "hog", "--json"); v.State != "error" && time.Now().Before(deadline); in.jsonOut(&v, "vm", "show", "hog", "--json") {
		time.Sleep(200 * time.Millisecond)
	}
	const want = "out of memory: the guest used more than its memory plus overhead; give it more with --memory"
	if v.State != "error" || v.Error != want {
		dlog, _ := os.ReadFile(in.path("state", "bangerd.log"))
		t.Fatalf("the VM whose QEMU went past its limit: state %s, error %q (process alive: %v)\ndaemon log:\n%s", v.State, v.Error, processAlive(hog.PID), dlog)
	}
	if processAlive(hog.PID) {
		t.Errorf("the hog's QEMU %d still runs", hog.PID)
	}
	// Removed right after the state is recorded.
	for deadline := time.Now().Add(10 * time.Second); g.exists(hog.ID) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if g.exists(hog.ID) {
		t.Errorf("the hog's cgroup is left after its VM died")
	}
	in.jsonOut(&v, "vm", "show", "calm", "--json")
	if v.State != "running" || !processAlive(calm.PID) {
		t.Fatalf("the other VM: %+v", v)
	}
	in.ok("vm", "exec", "calm", "--", "true")
	in.ok("vm", "rm", "-f", "hog")
	in.ok("vm", "rm", "-f", "calm")
}
