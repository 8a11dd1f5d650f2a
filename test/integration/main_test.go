// Package integration runs banger as a user does: the real banger and
// bangerd binaries as processes, against a real OCI registry served on
// loopback, with every instance in its own BANGER_HOME.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/paths"
	"banger/internal/testenv"
)

// binDir holds banger, bangerd and banger-vsock-agent built for this run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "banger-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	// Other users run these binaries in the permission tests.
	os.Chmod(dir, 0o755)
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	for _, b := range []struct{ pkg, cgo string }{
		{"./cmd/banger", ""}, {"./cmd/bangerd", ""}, {"./cmd/banger-vsock-agent", "CGO_ENABLED=0"},
	} {
		cmd := exec.Command("go", "build", "-o", dir+"/", b.pkg)
		cmd.Dir = root
		cmd.Env = os.Environ()
		if b.cgo != "" {
			cmd.Env = append(cmd.Env, b.cgo)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", b.pkg, err, out)
			os.Exit(1)
		}
	}
	reapOrphans()
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// instance is one banger home with its own daemon.
type instance struct {
	t     testing.TB
	home  string
	bins  string // where its banger and bangerd are (binDir)
	env   []string
	netns string // the VM network's namespace, "" when not root
}

func newInstance(t testing.TB) *instance {
	return newInstanceWith(t, binDir)
}

// newInstanceWith is newInstance running the banger and bangerd in bins
// (another build, for a comparison).
func newInstanceWith(t testing.TB, bins string) *instance {
	t.Helper()
	// Short path: the socket must fit in 108 bytes.
	home, err := os.MkdirTemp("", "bg")
	if err != nil {
		t.Fatal(err)
	}
	in := &instance{t: t, home: home, bins: bins, env: append(os.Environ(), "BANGER_HOME="+home, "PATH="+bins+":"+os.Getenv("PATH"))}
	if os.Geteuid() == 0 {
		// The daemon's VM network (bridge, TAPs, rules, DNS, published
		// ports) lives in a namespace of the test's own, deleted after
		// the daemon stops: tests never touch the host's network.
		in.netns = testenv.NetNS(t)
		in.env = append(in.env, "BANGER_NETNS="+in.netns)
	}
	t.Cleanup(func() {
		in.stopDaemon()
		// VMs outlive their daemon by design; a test that failed half way
		// leaves some. Nothing of this home may outlive the test.
		reapHome(home)
		if l, err := paths.New(home); err == nil {
			os.RemoveAll(l.RAMDir())
		}
		os.RemoveAll(home)
	})
	return in
}

// reapHome kills every process started for a banger home (VMMs,
// virtiofsd, console-log helpers name a path under it) and waits for
// them to go.
func reapHome(home string) {
	// Twice: a CLI of the test's that lost its daemon may be starting
	// another one (auto-start) just as the first pass runs.
	for pass := 0; pass < 2; pass++ {
		pids := homeProcs(home)
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		deadline := time.Now().Add(10 * time.Second)
		for _, pid := range pids {
			for processAlive(pid) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
		}
		if pass == 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// homeProcs lists the processes whose command line names a path under home.
func homeProcs(home string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		// A path under home, or home itself as an argument (bangerd
		// --home HOME).
		if err == nil && (bytes.Contains(b, []byte(home+"/")) || bytes.Contains(b, []byte("\x00"+home+"\x00"))) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// reapOrphans kills what earlier runs that were killed outright (a
// timeout, ^C) left behind: processes of an integration home that no
// longer exists, and their RAM directories.
func reapOrphans() {
	homes, _ := filepath.Glob(filepath.Join(os.TempDir(), "bg*"))
	live := map[string]bool{}
	for _, h := range homes {
		live[h] = true
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for _, arg := range bytes.Split(b, []byte{0}) {
			m := orphanHome.FindSubmatch(arg)
			if m != nil && !live[string(m[1])] {
				reapHome(string(m[1]))
				if l, err := paths.New(string(m[1])); err == nil {
					os.RemoveAll(l.RAMDir())
				}
				break
			}
		}
	}
}

// orphanHome matches a path inside an integration home, or a whole
// argument that is one (bangerd --home HOME).
var orphanHome = regexp.MustCompile(`(` + regexp.QuoteMeta(os.TempDir()) + `/bg[0-9]+)(/state/|$)`)

// result is one finished CLI run.
type result struct {
	stdout, stderr string
	code           int
}

func (in *instance) run(args ...string) result {
	in.t.Helper()
	return in.runEnv(nil, args...)
}

func (in *instance) runEnv(extra []string, args ...string) result {
	in.t.Helper()
	return in.runLimit(2*time.Minute, extra, args...)
}

// runLimit runs the CLI with extra environment, killing it after limit.
func (in *instance) runLimit(limit time.Duration, extra []string, args ...string) result {
	in.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(in.bins, "banger"), args...)
	cmd.Env = append(append([]string{}, in.env...), extra...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		in.t.Fatalf("banger %v: %v", args, err)
	}
	return result{out.String(), errb.String(), code}
}

// ok runs the CLI and fails the test unless it exits 0.
func (in *instance) ok(args ...string) string {
	in.t.Helper()
	r := in.run(args...)
	if r.code != 0 {
		in.t.Fatalf("banger %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// fails runs the CLI and checks it fails with one error line containing want.
func (in *instance) fails(want string, args ...string) result {
	in.t.Helper()
	r := in.run(args...)
	if r.code == 0 {
		in.t.Fatalf("banger %s succeeded, want failure mentioning %q", strings.Join(args, " "), want)
	}
	// Progress lines may come first; the error is one line, the last.
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	last := lines[len(lines)-1]
	errLines := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "banger: ") {
			errLines++
		}
	}
	if errLines != 1 || !strings.HasPrefix(last, "banger: ") || !strings.Contains(last, want) {
		in.t.Fatalf("banger %s: stderr %q: want it to end in one line `banger: …%s…`", strings.Join(args, " "), r.stderr, want)
	}
	return r
}

// with returns the instance bound to a subtest's t.
func (in *instance) with(t *testing.T) *instance {
	c := *in
	c.t = t
	return &c
}

func (in *instance) jsonOut(v any, args ...string) {
	in.t.Helper()
	out := in.ok(args...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		in.t.Fatalf("banger %s: output is not JSON: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (in *instance) daemonPID() int {
	in.t.Helper()
	var st struct{ PID int }
	in.jsonOut(&st, "daemon", "status", "--json")
	return st.PID
}

func (in *instance) stopDaemon() {
	cmd := exec.Command(filepath.Join(in.bins, "banger"), "daemon", "stop")
	cmd.Env = append(append([]string{}, in.env...), "BANGER_NO_AUTOSTART=1")
	cmd.Run()
}

func (in *instance) path(parts ...string) string {
	return filepath.Join(append([]string{in.home}, parts...)...)
}

// leftovers lists staging directories, orphan image directories and
// temporary blobs: what a failed or interrupted pull must not leave.
func (in *instance) leftovers(knownIDs ...string) []string {
	in.t.Helper()
	var out []string
	entries, _ := os.ReadDir(in.path("state", "images"))
	known := map[string]bool{}
	for _, id := range knownIDs {
		known[id] = true
	}
	for _, e := range entries {
		if !known[e.Name()] {
			out = append(out, "state/images/"+e.Name())
		}
	}
	blobs, _ := os.ReadDir(in.path("cache", "blobs", "sha256"))
	for _, b := range blobs {
		if strings.HasPrefix(b.Name(), ".tmp-") {
			out = append(out, "cache/blobs/sha256/"+b.Name())
		}
	}
	return out
}

func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	// A zombie has exited; it just has not been reaped yet.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(b), ") Z ")
}
