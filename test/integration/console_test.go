package integration

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"banger/internal/config"
	"banger/internal/consolelog"
	"banger/internal/imagepull/imagetest"
)

// These tests flood a guest's serial console: what a guest writes there
// must not fill the host's disk, while the daemon runs or not.

// consoleCap is console_log_max in these instances: small, so that what
// a guest writes in seconds over an emulated serial line is many times
// the cap. Measured here under emulation: about 0.35 to 0.75 MiB/s of
// long lines, but only some 60 KiB/s of short numbered ones (the tty
// turns each newline into a carriage return and newline, byte by byte).
const consoleCap = 128 << 10

// consoleInstance is an instance with the small cap and no warm
// templates (a first boot would hold the image's command for one).
func consoleInstance(t *testing.T) *instance {
	t.Helper()
	in := newInstance(t)
	os.WriteFile(in.path("config.toml"), []byte("warm = false\nconsole_log_max = \"128K\"\n"), 0o644)
	vmFixtures(t, in)
	return in
}

// floodSize is how much the flood test writes: $BANGER_TEST_CONSOLE_FLOOD
// (a size such as 64M), else 16 MiB, 128 times the cap, which the
// serial line carries in 20 to 50 s under emulation here (64 MiB would
// take minutes).
func floodSize(t *testing.T) int64 {
	s := os.Getenv("BANGER_TEST_CONSOLE_FLOOD")
	if s == "" {
		return 16 << 20
	}
	n, err := config.ParseSize(s)
	if err != nil {
		t.Fatalf("BANGER_TEST_CONSOLE_FLOOD: %v", err)
	}
	return n
}

// consoleOnDisk is what the consoles of the VM directories matching
// pattern take on disk: each log and its rotated half.
func consoleOnDisk(pattern string) int64 {
	var total int64
	dirs, _ := filepath.Glob(pattern)
	for _, dir := range dirs {
		for _, f := range []string{"console.log", "console.log" + consolelog.Rotated} {
			if fi, err := os.Stat(filepath.Join(dir, f)); err == nil {
				total += fi.Size()
			}
		}
	}
	return total
}

// watchConsole samples consoleOnDisk(pattern) every 10 ms until the
// returned function is called, which returns the largest seen.
func watchConsole(pattern string) func() int64 {
	var most atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if n := consoleOnDisk(pattern); n > most.Load() {
				most.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return func() int64 {
		close(stop)
		<-done
		return most.Load()
	}
}

// waitConsoleTail waits until the end of the VM in dir's console log
// holds a line with s other than not, reading the files (the daemon may
// be down), and returns that line.
func waitConsoleTail(t *testing.T, dir, s, not string, limit time.Duration) string {
	t.Helper()
	path := filepath.Join(dir, "console.log")
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		b, _ := consolelog.Tail(path, 4<<10)
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); strings.Contains(l, s) && l != not {
				return l
			}
		}
	}
	b, _ := consolelog.Tail(path, 1<<10)
	t.Fatalf("the console never showed %q; it ends:\n%q", s, b)
	return ""
}

// consoleHelpers lists the console log helpers of the VM in dir.
func consoleHelpers(dir string) []int {
	var pids []int
	path := filepath.Join(dir, "console.log")
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if consolelog.IsHelper(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), path) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			pids = append(pids, pid)
		}
	}
	return pids
}

// noHelperKilled fails t when the daemon had to kill a console log
// helper: each must end by itself, its last lines written, once its VMM
// is gone.
func noHelperKilled(t *testing.T, in *instance) {
	t.Helper()
	if b, _ := os.ReadFile(in.path("state", "bangerd.log")); strings.Contains(string(b), "console log helper outlived its VMM") {
		t.Errorf("the daemon killed a console log helper that outlived its VMM:\n%s", b)
	}
}

func marker(t *testing.T, prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func createConsoleVM(t *testing.T, in *instance, name, image string) vmJSON {
	t.Helper()
	var v vmJSON
	in.jsonOut(&v, "vm", "create", "--name", name, "--image", image, "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--network", "none", "--json")
	if n := len(consoleHelpers(v.Dir)); n != 1 {
		t.Fatalf("%d console log helpers for VM %s, want 1", n, name)
	}
	return v
}

// TestConsoleFloodIsCapped: a guest writes many times the cap to its
// console. The log stays within the cap throughout, `vm logs` ends with
// what the guest wrote last, the VM stays healthy, and `vm rm` leaves no
// helper behind.
func TestConsoleFloodIsCapped(t *testing.T) {
	in := consoleInstance(t)
	v := createConsoleVM(t, in, "fl", "bb")
	size, end := floodSize(t), marker(t, "FLOOD-END")
	most := watchConsole(v.Dir)
	start := time.Now()
	flood := fmt.Sprintf("busybox head -c %d /dev/zero | busybox tr '\\0' x >/dev/console; echo >/dev/console; echo %s >/dev/console", size, end)
	if r := in.runLimit(10*time.Minute, nil, "vm", "exec", "fl", "--", "sh", "-c", flood); r.code != 0 {
		t.Fatalf("flooding the console: exit %d: %s", r.code, r.stderr)
	}
	waitConsoleTail(t, v.Dir, end, "", time.Minute)
	took := time.Since(start)
	t.Logf("the guest wrote %d MiB to its console in %s: %.2f MiB/s", size>>20, took.Round(time.Millisecond), float64(size)/(1<<20)/took.Seconds())
	if n := most(); n > consoleCap {
		t.Errorf("the console took %d bytes on disk during the flood, cap %d", n, consoleCap)
	}
	logs := in.ok("vm", "logs", "fl", "--raw")
	if len(logs) > consoleCap || !strings.HasSuffix(logs, end+"\r\n") || !strings.Contains(logs[max(0, len(logs)-64<<10):], strings.Repeat("x", 4096)) {
		t.Errorf("vm logs: %d bytes, want at most %d ending with the flood and %q; it ends:\n%q", len(logs), consoleCap, end, logs[max(0, len(logs)-200):])
	}
	in.ok("vm", "exec", "fl", "--", "true")
	in.ok("vm", "rm", "-f", "fl")
	if pids := consoleHelpers(v.Dir); len(pids) > 0 {
		t.Errorf("console log helpers %v survived vm rm", pids)
	}
	noHelperKilled(t, in)
}

// TestConsoleCapWithoutDaemon: the cap holds while no daemon runs (the
// guest floods after `daemon stop`), and a new daemon's `vm logs -f`
// follows the log across its rotations: every line once, in order.
func TestConsoleCapWithoutDaemon(t *testing.T) {
	in := consoleInstance(t)
	v := createConsoleVM(t, in, "dr", "bb")
	helpers := consoleHelpers(v.Dir)
	// About 170 KiB of numbered lines, started once the exec has
	// returned and the daemon is gone.
	in.ok("vm", "exec", "dr", "--", "sh", "-c", "(busybox sleep 2; busybox seq 1 30000 | busybox cat >/dev/console; echo SEQ1-END >/dev/console) </dev/null >/dev/null 2>&1 &")
	most := watchConsole(v.Dir)
	in.ok("daemon", "stop")
	waitConsoleTail(t, v.Dir, "SEQ1-END", "", 2*time.Minute)
	if n := most(); n > consoleCap {
		t.Errorf("with no daemon, the console took %d bytes on disk, cap %d", n, consoleCap)
	}
	if now := consoleHelpers(v.Dir); len(now) != 1 || now[0] != helpers[0] {
		t.Errorf("console log helpers %v, want the VM's own %v, still running", now, helpers)
	}

	// The next command starts a daemon again.
	follow := exec.Command(filepath.Join(binDir, "banger"), "vm", "logs", "-f", "dr")
	follow.Env = in.env
	var out syncBuffer
	follow.Stdout = &out
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		follow.Process.Kill()
		follow.Wait()
	}()
	// About 340 KiB more: the log rotates five times while followed.
	in.runLimit(5*time.Minute, nil, "vm", "exec", "dr", "--", "sh", "-c", "busybox seq 30001 80000 | busybox cat >/dev/console; echo SEQ2-END >/dev/console")
	for deadline := time.Now().Add(2 * time.Minute); !strings.Contains(out.String(), "SEQ2-END") && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	// From the oldest line kept on: the first may be cut.
	lines := strings.Split(out.String(), "\n")[1:]
	var nums []int
	ends := 0
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if n, err := strconv.Atoi(l); err == nil {
			nums = append(nums, n)
		}
		if l == "SEQ1-END" || l == "SEQ2-END" {
			ends++
		}
	}
	ok := ends == 2 && len(nums) > 0 && nums[0] <= 30001 && nums[len(nums)-1] == 80000
	for i := 1; ok && i < len(nums); i++ {
		if nums[i] != nums[i-1]+1 {
			t.Errorf("vm logs -f: line %d after %d", nums[i], nums[i-1])
			ok = false
		}
	}
	if !ok {
		t.Errorf("vm logs -f: %d numbered lines from %v, %d end lines; want every line from 30001 (or before) to 80000 once, both ends", len(nums), nums[:min(1, len(nums))], ends)
	}
	in.ok("vm", "rm", "-f", "dr")
	if pids := consoleHelpers(v.Dir); len(pids) > 0 {
		t.Errorf("console log helpers %v survived vm rm", pids)
	}
	noHelperKilled(t, in)
}

// TestConsoleFloodDuringBoot: a VM whose command floods the console from
// the first moment still becomes ready, also on a second boot that
// starts with the log full (it rotates at once).
func TestConsoleFloodDuringBoot(t *testing.T) {
	in := consoleInstance(t)
	reg := imagetest.StartRegistry(t)
	ref := reg.Push(t, "test/busybox:flood", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{busyboxLayer(t)},
		Config: v1.Config{Cmd: []string{"/bin/sh", "-c", "busybox seq 1 50000 | busybox cat; echo BOOT-FLOOD-END $(busybox cat /proc/sys/kernel/random/uuid)"}}}))
	in.ok("image", "pull", "-q", ref, "--name", "bbflood")
	most := watchConsole(in.path("state", "vms", "*"))
	v := createConsoleVM(t, in, "fb", "bbflood")
	first := waitConsoleTail(t, v.Dir, "BOOT-FLOOD-END", "", 2*time.Minute)
	in.ok("vm", "stop", "fb")
	in.ok("vm", "start", "fb")
	in.ok("vm", "exec", "fb", "--", "true")
	waitConsoleTail(t, v.Dir, "BOOT-FLOOD-END", first, 2*time.Minute)
	if n := most(); n > consoleCap {
		t.Errorf("the console took %d bytes on disk, cap %d", n, consoleCap)
	}
	in.ok("vm", "rm", "-f", "fb")
	noHelperKilled(t, in)
}
