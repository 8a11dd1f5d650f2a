package cgroup

// Tests on this host's real cgroups, as root: each makes its groups
// under a parent of its own (bgt-<random>), kills what it started and
// removes its groups and the parent when it ends, in reverse order.

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/testenv"
)

// live returns a Manager on this host's cgroups under a fresh parent,
// removed when the test ends (after its groups: clean-ups run last
// registered, first run).
func live(t *testing.T) *Manager {
	t.Helper()
	testenv.RequireRoot(t)
	b := make([]byte, 4)
	rand.Read(b)
	m, err := New(fmt.Sprintf("bgt-%x", b))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Require(t, m.Check() == nil, fmt.Sprintf("this host cannot make cgroups: %v", m.Check()))
	t.Cleanup(func() {
		if err := m.RemoveParent(); err != nil {
			t.Errorf("clean-up: %v", err)
		}
	})
	return m
}

// group creates group name with limits l and, when the test ends, kills
// what is left in it and removes it.
func group(t *testing.T, m *Manager, name string, l Limits) {
	t.Helper()
	if err := m.Create(name, l); err != nil {
		t.Fatalf("Create(%s, %+v): %v", name, l, err)
	}
	t.Cleanup(func() {
		killAll(t, m, name)
		if err := m.Remove(name); err != nil {
			t.Errorf("clean-up: %v", err)
		}
	})
}

// killAll SIGKILLs every process in group name until none is left.
func killAll(t *testing.T, m *Manager, name string) {
	for range 200 {
		pids, err := m.Procs(name)
		if err != nil || len(pids) == 0 {
			return
		}
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("processes left in cgroup %s", name)
}

// startIn starts argv in group name with StartIn; it is killed and
// reaped when the test ends.
func startIn(t *testing.T, m *Manager, name string, stdin io.Reader, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if err := m.StartIn(name, cmd.SysProcAttr, cmd.Start); err != nil {
		t.Fatalf("StartIn(%s, %v): %v", name, argv, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// threadGroups maps the cgroup lines of this process's threads (as one
// string) to the threads that have them.
func threadGroups(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "cgroup"))
		if err != nil {
			continue // the thread ended
		}
		out[string(b)] = append(out[string(b)], task.Name())
	}
	return out
}

// groupsOf returns the cgroup lines of /proc/PATH/cgroup (PATH: a pid,
// or self/task/TID).
func groupsOf(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", path, "cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// wantIn fails unless process pid is in group name in every hierarchy
// the Manager uses: lines "0::/path" (v2) or "N:memory:/path",
// "N:cpu,cpuacct:/path" (v1) of /proc/PID/cgroup.
func wantIn(t *testing.T, m *Manager, pid int, name string) {
	t.Helper()
	want := "/" + m.parent + "/" + name
	controllers := []string{""} // v2's line names no controller
	if m.Mode() == V1 {
		controllers = nil
		for c := range m.h.v1 {
			controllers = append(controllers, c)
		}
	}
	lines := groupsOf(t, strconv.Itoa(pid))
	for _, c := range controllers {
		found := false
		for _, l := range lines {
			parts := strings.SplitN(l, ":", 3)
			if len(parts) == 3 && (parts[1] == c || c != "" && slices.Contains(strings.Split(parts[1], ","), c)) {
				found = true
				if parts[2] != want {
					t.Errorf("pid %d: %s, want %s", pid, l, want)
				}
			}
		}
		if !found {
			t.Errorf("pid %d: no line for %q in %v", pid, c, lines)
		}
	}
}

func TestLimitsLive(t *testing.T) {
	m := live(t)
	group(t, m, "lim", Limits{})
	const v1Unlimited = "9223372036854771712" // PAGE_COUNTER_MAX pages of 4 KiB
	memsw := exists(filepath.Join(m.dir("memory", "lim"), "memory.memsw.limit_in_bytes"))
	// Applied in turn to one group: raising and lowering memory checks
	// the order of the v1 RAM and RAM+swap limits.
	tests := []struct {
		limits Limits
		v1, v2 map[string]string // controller/file → value
	}{
		{
			limits: Limits{MemoryBytes: 64 << 20, CPUs: 0.5, Pids: 8},
			v1: map[string]string{"memory/memory.limit_in_bytes": "67108864", "memory/memory.memsw.limit_in_bytes": "67108864",
				"cpu/cpu.cfs_period_us": "100000", "cpu/cpu.cfs_quota_us": "50000", "pids/pids.max": "8"},
			v2: map[string]string{"memory/memory.max": "67108864", "memory/memory.swap.max": "0", "memory/memory.oom.group": "1",
				"cpu/cpu.max": "50000 100000", "pids/pids.max": "8"},
		},
		{
			limits: Limits{MemoryBytes: 1 << 30, CPUs: 2, Pids: 100},
			v1: map[string]string{"memory/memory.limit_in_bytes": "1073741824", "memory/memory.memsw.limit_in_bytes": "1073741824",
				"cpu/cpu.cfs_quota_us": "200000", "pids/pids.max": "100"},
			v2: map[string]string{"memory/memory.max": "1073741824", "cpu/cpu.max": "200000 100000", "pids/pids.max": "100"},
		},
		{
			limits: Limits{MemoryBytes: 32 << 20, CPUs: 0.25, Pids: 4},
			v1: map[string]string{"memory/memory.limit_in_bytes": "33554432", "memory/memory.memsw.limit_in_bytes": "33554432",
				"cpu/cpu.cfs_quota_us": "25000", "pids/pids.max": "4"},
			v2: map[string]string{"memory/memory.max": "33554432", "cpu/cpu.max": "25000 100000", "pids/pids.max": "4"},
		},
		{
			limits: Limits{},
			v1: map[string]string{"memory/memory.limit_in_bytes": v1Unlimited, "memory/memory.memsw.limit_in_bytes": v1Unlimited,
				"cpu/cpu.cfs_quota_us": "-1", "pids/pids.max": "max"},
			v2: map[string]string{"memory/memory.max": "max", "memory/memory.swap.max": "max", "cpu/cpu.max": "max 100000", "pids/pids.max": "max"},
		},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%+v", tt.limits), func(t *testing.T) {
			if err := m.Create("lim", tt.limits); err != nil {
				t.Fatal(err)
			}
			want := tt.v1
			if m.Mode() == V2 {
				want = tt.v2
			}
			for cf, v := range want {
				c, f, _ := strings.Cut(cf, "/")
				if f == "memory.memsw.limit_in_bytes" && !memsw {
					continue // swap accounting off: RAM only
				}
				p := filepath.Join(m.dir(c, "lim"), f)
				if got := readTrim(t, p); got != v {
					t.Errorf("%s = %s, want %s", p, got, v)
				}
			}
		})
	}
}

func TestStartInAndAdd(t *testing.T) {
	m := live(t)
	group(t, m, "vm", Limits{MemoryBytes: 64 << 20, CPUs: 1, Pids: 16})
	own := threadGroups(t)
	if len(own) != 1 {
		t.Fatalf("the test's threads are in different cgroups before StartIn: %v", own)
	}
	// Several starts: the goroutine that forks runs on whichever thread
	// the scheduler picks, the main one included.
	var cmd *exec.Cmd
	var sleeps []*exec.Cmd
	for range 10 {
		cmd = startIn(t, m, "vm", nil, "sleep", "30")
		sleeps = append(sleeps, cmd)
		wantIn(t, m, cmd.Process.Pid, "vm")
		// The thread that forked is back where it was, at once.
		if now := threadGroups(t); len(now) != 1 || !slices.Equal(slices.Collect(maps.Keys(now)), slices.Collect(maps.Keys(own))) {
			t.Fatalf("the test's threads' cgroups after StartIn: %v, want all as before: %v", now, own)
		}
	}
	pids, err := m.Procs("vm")
	if err != nil || len(pids) != 10 || !slices.Contains(pids, cmd.Process.Pid) || slices.Contains(pids, os.Getpid()) {
		t.Errorf("Procs = %v, %v; want the 10 sleeps alone", pids, err)
	}
	// Killed and reaped: a zombie still counts in pids.current.
	for _, c := range sleeps {
		c.Process.Kill()
		c.Wait()
	}

	// A process started elsewhere joins with Add.
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	if err := m.Add("vm", other.Process.Pid); err != nil {
		t.Fatal(err)
	}
	wantIn(t, m, other.Process.Pid, "vm")
	if s, err := m.Stats("vm"); err != nil || s.Pids != 1 {
		t.Errorf("Stats = %+v, %v; want 1 pid", s, err)
	}

	if err := m.Add("nosuch", other.Process.Pid); !errors.Is(err, ErrNotFound) {
		t.Errorf("Add to a missing group: %v, want ErrNotFound", err)
	}
	if err := m.StartIn("nosuch", &syscall.SysProcAttr{}, func() error { t.Error("started"); return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("StartIn a missing group: %v, want ErrNotFound", err)
	}
}

// zeros is an endless stream of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestOOMKillStaysInGroup: a process that outgrows its group's memory
// limit is OOM-killed, and only it: a process in a sibling group lives.
func TestOOMKillStaysInGroup(t *testing.T) {
	t.Parallel()
	m := live(t)
	group(t, m, "calm", Limits{MemoryBytes: 64 << 20, Pids: 16})
	group(t, m, "hog", Limits{MemoryBytes: 64 << 20, Pids: 16})
	calm := startIn(t, m, "calm", nil, "sleep", "30")

	// tail keeps its input until it has ten lines: 600 MiB of zeros
	// without a newline are all kept. The limit stops it at 64.
	hog := startIn(t, m, "hog", io.LimitReader(zeros{}, 600<<20), "tail")
	err := hog.Wait()
	ws, _ := hog.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the memory hog ended with %v (%v), want killed by SIGKILL", hog.ProcessState, err)
	}
	s, err := m.Stats("hog")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("hog: %+v", s)
	if s.OOMKills < 1 {
		t.Errorf("OOM kills %d, want at least 1", s.OOMKills)
	}
	if s.MemoryPeakBytes > 64<<20 {
		t.Errorf("peak memory %d above the 64 MiB limit", s.MemoryPeakBytes)
	}
	if err := calm.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the process in the sibling group died: %v", err)
	}
	if s, err := m.Stats("calm"); err != nil || s.OOMKills != 0 || s.Pids != 1 {
		t.Errorf("sibling: %+v, %v; want no OOM kill and its one process", s, err)
	}
}

// TestPidsLimit: a shell forking 20 sleeps in a group of 8 tasks gets
// no more than 8, and the kernel says it refused forks.
func TestPidsLimit(t *testing.T) {
	t.Parallel()
	m := live(t)
	group(t, m, "forky", Limits{Pids: 8})
	// A file, not a buffer: the shell writes it while the test reads.
	stderr, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	cmd := exec.Command("sh", "-c", `i=0; while [ $i -lt 20 ]; do sleep 3 & i=$((i+1)); done; wait`)
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if err := m.StartIn("forky", cmd.SysProcAttr, cmd.Start); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killAll(t, m, "forky"); cmd.Wait() })
	most, refused := 0, uint64(0)
	for range 50 {
		s, err := m.Stats("forky")
		if err != nil {
			t.Fatal(err)
		}
		most = max(most, s.Pids)
		time.Sleep(20 * time.Millisecond)
	}
	events := filepath.Join(m.dir("pids", "forky"), "pids.events")
	refused, err = readKey(events, "max")
	if err != nil {
		t.Fatal(err)
	}
	said, _ := os.ReadFile(stderr.Name())
	t.Logf("most tasks seen %d, forks refused %d, shell: %s", most, refused, strings.TrimSpace(string(said)))
	if most > 8 || most < 2 {
		t.Errorf("at most %d tasks seen, want 2..8", most)
	}
	if refused < 1 {
		t.Errorf("%s: max %d, want forks refused", events, refused)
	}
}

// TestCPUQuota: a busy loop in a group of half a CPU uses about half a
// CPU, however idle the host.
func TestCPUQuota(t *testing.T) {
	t.Parallel()
	m := live(t)
	group(t, m, "busy", Limits{CPUs: 0.5, Pids: 8})
	startIn(t, m, "busy", nil, "sh", "-c", "while :; do :; done")
	time.Sleep(200 * time.Millisecond)
	s0, err := m.Stats("busy")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	time.Sleep(2 * time.Second)
	s1, err := m.Stats("busy")
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(t0)
	if s1.CPU == 0 {
		testenv.Require(t, false, "this host reports no CPU time for the group (v1 without cpuacct)")
	}
	share := float64(s1.CPU-s0.CPU) / float64(wall)
	throttled, _ := readKey(filepath.Join(m.dir("cpu", "busy"), "cpu.stat"), "nr_throttled")
	t.Logf("used %.2f CPU over %v, throttled %d times", share, wall.Round(time.Millisecond), throttled)
	if share > 0.6 {
		t.Errorf("used %.2f CPU, want at most 0.6 under a 0.5 quota", share)
	}
	if share < 0.05 {
		t.Errorf("used %.2f CPU: the busy loop did not run, or the counter is wrong", share)
	}
	// A loop starved by a busy host may never reach the quota within a
	// period; one that got near it was throttled to stay there.
	if share > 0.4 && throttled == 0 {
		t.Errorf("used %.2f CPU and was never throttled", share)
	}
}

// TestRemoveAndList: groups are listed, a busy group is not removed, a
// removed one leaves no directory, and an orphan half made by a crash
// is found and removed.
func TestRemoveAndList(t *testing.T) {
	m := live(t)
	for _, n := range []string{"a", "b", "c"} {
		if err := m.Create(n, Limits{Pids: 8}); err != nil {
			t.Fatal(err)
		}
	}
	// A crash between two mkdirs leaves a group in one hierarchy only.
	half := filepath.Join(m.bases()[len(m.bases())-1], m.parent, "half")
	if err := os.Mkdir(half, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := startIn(t, m, "b", nil, "sleep", "30")
	if names, err := m.List(); err != nil || !slices.Equal(names, []string{"a", "b", "c", "half"}) {
		t.Fatalf("List() = %v, %v", names, err)
	}
	err := m.Remove("b")
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), strconv.Itoa(cmd.Process.Pid)) {
		t.Errorf("Remove of a busy group: %v, want ErrBusy naming pid %d", err, cmd.Process.Pid)
	}
	if err := m.RemoveParent(); err == nil {
		t.Error("RemoveParent succeeded with groups left")
	}
	cmd.Process.Kill()
	cmd.Wait()
	for _, n := range []string{"a", "b", "c", "half", "never-made"} {
		if err := m.Remove(n); err != nil {
			tasks, _ := os.ReadFile(filepath.Join(m.dirs(n)[0], "tasks"))
			t.Errorf("Remove(%s): %v; tasks %q", n, err, tasks)
		}
		for _, d := range m.dirs(n) {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s still there after Remove (%v)", d, err)
			}
		}
	}
	if names, err := m.List(); err != nil || len(names) != 0 {
		t.Errorf("List() after removing all = %v, %v", names, err)
	}
	if _, err := m.Stats("a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stats of a removed group: %v, want ErrNotFound", err)
	}
}

// TestV2Membership runs the v2 code paths that need no controller
// (making, cloning into, adding to, listing and removing groups)
// against a real cgroup2 mount: on a hybrid host like the CI machines,
// the empty "unified" one. Limits on v2 are covered by TestV2Limits.
func TestV2Membership(t *testing.T) {
	testenv.RequireRoot(t)
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	unified := ""
	for _, mt := range parseMountinfo(string(b)) {
		if mt.fstype == "cgroup2" && mt.root == "/" {
			unified = mt.point
			break
		}
	}
	testenv.Require(t, unified != "", "no cgroup2 mounted")
	rand.Read(b[:4])
	m := newManager(hierarchy{mode: V2, unified: unified}, fmt.Sprintf("bgt-%x", b[:4]), nil)
	t.Cleanup(func() {
		if err := m.RemoveParent(); err != nil {
			t.Errorf("clean-up: %v", err)
		}
	})
	group(t, m, "vm", Limits{})
	if err := m.Create("vm", Limits{MemoryBytes: 1 << 30}); err == nil {
		t.Error("limits accepted without the memory controller")
	}
	attr := &syscall.SysProcAttr{}
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = attr
	if err := m.StartIn("vm", attr, cmd.Start); err != nil {
		t.Fatalf("StartIn (clone3 into the group): %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if attr.UseCgroupFD || attr.CgroupFD != 0 {
		t.Errorf("attr keeps the group's descriptor after StartIn: %+v", attr)
	}
	wantIn(t, m, cmd.Process.Pid, "vm")

	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	if err := m.Add("vm", other.Process.Pid); err != nil {
		t.Fatal(err)
	}
	wantIn(t, m, other.Process.Pid, "vm")
	want := []int{cmd.Process.Pid, other.Process.Pid}
	slices.Sort(want)
	if pids, err := m.Procs("vm"); err != nil || !slices.Equal(pids, want) {
		t.Errorf("Procs = %v, %v; want %v", pids, err, want)
	}
	if names, err := m.List(); err != nil || !slices.Equal(names, []string{"vm"}) {
		t.Errorf("List() = %v, %v", names, err)
	}
	if err := m.Remove("vm"); !errors.Is(err, ErrBusy) {
		t.Errorf("Remove of a busy group: %v, want ErrBusy", err)
	}
}
