package vm

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/consolelog"
	"banger/internal/hostnet"
	"banger/internal/paths"
	"banger/internal/store"
	"banger/internal/testenv"
	"banger/internal/vmm"
	"banger/internal/vmnet"
	"banger/internal/vsockagent"
)

// These tests drive the service's transitions with a fake VMM backend:
// no HTTP, no QEMU. Everything else is real: the SQLite store, the
// state machine, the console log, the agent protocol (a real agent
// session to a small in-process guest), and a real process standing in
// for each VMM, so stops, kills and a daemon restart's adoption see a
// pid as they would a VMM's. Real VMs boot in test/integration.

// fakeBackend is a VMM backend whose "VMs" are placeholder processes.
type fakeBackend struct {
	neverReady atomic.Bool // the guest never prints the ready line
	hog        atomic.Bool // the VMM allocates without end a second after it starts
	starts     atomic.Int32
	// restores: the backend restores snapshots (a restore starts a VMM
	// as a boot does); together: starts and restores wait there until
	// that many are under way at once.
	restores atomic.Bool
	together *barrier

	mu        sync.Mutex
	failStart error // the VMM does not start
}

func (b *fakeBackend) setFail(err error) {
	b.mu.Lock()
	b.failStart = err
	b.mu.Unlock()
}

func (b *fakeBackend) Pick(choice string) (string, Backend, error) {
	if choice != "" && choice != "auto" && choice != "fake" {
		return "", nil, fmt.Errorf("%w: --vmm %q", api.ErrInvalid, choice)
	}
	return "fake", b, nil
}

func (b *fakeBackend) Start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	b.mu.Lock()
	err := b.failStart
	b.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := b.together.wait(); err != nil {
		return nil, err
	}
	b.starts.Add(1)
	// A process whose command line names the VM's directory, as a
	// VMM's does: vmmProcess recognises it.
	script := "while :; do sleep 1; done"
	if b.hog.Load() {
		// tail holds the line it reads, and /dev/zero has no end of
		// line. ulimit keeps it from the host's memory should the
		// cgroup not hold it (1 GiB: far above any test's limit).
		script = "sleep 1; ulimit -v 1048576; exec tail /dev/zero"
	}
	cmd := exec.Command("sh", "-c", script, "fakevmm", spec.Dir)
	// Started as a backend starts a VMM: through the spec's hook, which
	// places it in the VM's cgroup.
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	start := cmd.Start
	if spec.StartHook != nil {
		start = func() error { return spec.StartHook(cmd.SysProcAttr, cmd.Start) }
	}
	if err := start(); err != nil {
		return nil, err
	}
	m := &fakeMachine2{dir: spec.Dir, proc: cmd.Process, exited: make(chan struct{})}
	go func() { cmd.Wait(); m.exit() }()
	if spec.Console != nil && !b.neverReady.Load() {
		fmt.Fprintf(spec.Console, "booting\n%s test\n", vsockagent.ReadyLine)
	}
	return m, nil
}

func (b *fakeBackend) Restorer() vmm.Restorer {
	if !b.restores.Load() {
		return nil
	}
	return fakeRestorer{b}
}

// fakeRestorer "restores" a VM by starting its placeholder process.
type fakeRestorer struct{ b *fakeBackend }

func (r fakeRestorer) Restore(ctx context.Context, spec vmm.Spec, snap vmm.Snapshot) (vmm.Machine, error) {
	if _, err := os.Stat(snap.Memory); err != nil {
		return nil, fmt.Errorf("snapshot file: %w", err)
	}
	return r.b.Start(ctx, spec)
}

func (b *fakeBackend) Attach(ctx context.Context, dir string, pid int) (vmm.Machine, error) {
	p, err := os.FindProcess(pid)
	if err != nil {
		return nil, err
	}
	m := &fakeMachine2{dir: dir, proc: p, exited: make(chan struct{})}
	go func() {
		// Not our child: watch it go.
		for vmmProcess(pid, dir) {
			time.Sleep(20 * time.Millisecond)
		}
		m.exit()
	}()
	return m, nil
}

func (b *fakeBackend) DialAgent(ctx context.Context, dir string) (net.Conn, error) {
	return nil, errors.New("no agent socket in a fake VM's directory")
}

func (b *fakeBackend) Version(context.Context) (string, error) { return "1.0", nil }

// fakeMachine2 is one fake VM: its placeholder process and its guest
// agent, which answers power-off by ending the process.
type fakeMachine2 struct {
	dir    string
	proc   *os.Process
	exited chan struct{}
	once   sync.Once
	paused atomic.Bool
}

var (
	_ vmm.Machine = (*fakeMachine2)(nil)
	_ vmm.Pauser  = (*fakeMachine2)(nil)
)

func (m *fakeMachine2) exit()               { m.once.Do(func() { close(m.exited) }) }
func (m *fakeMachine2) PID() int            { return m.proc.Pid }
func (m *fakeMachine2) ConsolePath() string { return filepath.Join(m.dir, vmm.ConsoleLog) }
func (m *fakeMachine2) Kill() error {
	m.proc.Signal(syscall.SIGKILL)
	return nil
}
func (m *fakeMachine2) Stop(ctx context.Context) error { m.Kill(); return m.Wait(ctx) }
func (m *fakeMachine2) Wait(ctx context.Context) error {
	select {
	case <-m.exited:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
func (m *fakeMachine2) Pause(context.Context) error {
	m.paused.Store(true)
	return m.proc.Signal(syscall.SIGSTOP)
}
func (m *fakeMachine2) Resume(context.Context) error {
	m.paused.Store(false)
	return m.proc.Signal(syscall.SIGCONT)
}

// DialAgent serves the real agent protocol from a small guest: it
// answers every op with success, and power-off by ending the VM.
func (m *fakeMachine2) DialAgent(ctx context.Context, port uint32) (net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "agent")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	go func() {
		s, err := vsockagent.Server(vsockagent.NewChannel(conns[1]), vsockagent.Hello{Agent: "fake"}, func(st *vsockagent.Stream) {
			if m.paused.Load() {
				return // a frozen guest answers nothing
			}
			if st.Req.Op == "identity" {
				// Read first, as the agent does: answering before the
				// host has sent the identity made its write fail now
				// and then ("read/write on closed pipe").
				io.Copy(io.Discard, st)
			}
			st.SendExit(vsockagent.Exit{})
			if st.Req.Op == "poweroff" {
				m.proc.Signal(syscall.SIGKILL)
			}
		}, conns[1])
		if err == nil {
			<-s.Done()
		}
	}()
	return conns[0], nil
}

// testService is a service on a fresh home with the fake backend, an
// image and a kernel recorded, and VMs without a network.
func testService(t *testing.T, b *fakeBackend, st *store.Store, home string, opts ...func(*Deps)) *Service {
	t.Helper()
	layout, err := paths.New(home)
	if err != nil {
		t.Fatal(err)
	}
	if err := layout.MkdirAll(); err != nil {
		t.Fatal(err)
	}
	// The guest RAM directory is under /dev/shm, outside home: a
	// reconcile makes it, and it must not outlive the test.
	t.Cleanup(func() { os.RemoveAll(layout.RAMDir()) })
	cfg := config.Defaults()
	cfg.Warm, cfg.Network, cfg.DefaultImage, cfg.DiskSize = false, "none", "img", "64M"
	d := Deps{Layout: layout, Store: st, Backends: b, Kernels: fakeKernels{},
		Net: vmnet.New(vmnet.Config{Net: netConfig(t, layout)}), Log: slog.New(slog.DiscardHandler), Config: cfg,
		ReadyTimeout: 3 * time.Second, ConsoleWriter: consolelog.Pipe}
	for _, o := range opts {
		o(&d)
	}
	s := New(d)
	t.Cleanup(s.Close)
	return s
}

// netConfig keeps what a reconcile sweeps (orphan TAPs) in a network
// namespace of the test's own when the test runs as root.
func netConfig(t *testing.T, layout paths.Layout) hostnet.Config {
	c := hostnet.Config{StateDir: layout.RunDir}
	if os.Geteuid() == 0 {
		c.NetNS = testenv.NetNS(t)
	}
	return c
}

type fakeKernels struct{}

var testKernel = api.Kernel{ID: "k1", Name: "k", Vmlinux: "/nonexistent/vmlinux", Modules: []string{}, CreatedAt: time.Now()}

func (fakeKernels) Resolve(context.Context, string, string) (api.Kernel, error) {
	return testKernel, nil
}

// newStore opens a store in home with the image the tests use.
func newStore(t *testing.T, home string) *store.Store {
	t.Helper()
	layout, _ := paths.New(home)
	layout.MkdirAll()
	st, err := store.Open(t.Context(), layout.Database())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.InsertImage(t.Context(), api.Image{ID: "i1", Name: "img", Rootfs: filepath.Join(home, "rootfs.ext4"), CreatedAt: time.Now()})
	st.InsertKernel(t.Context(), testKernel)
	return st
}

func state(t *testing.T, s *Service, name string) State {
	t.Helper()
	v, err := s.Get(t.Context(), Self(), name)
	if err != nil {
		t.Fatal(err)
	}
	return State(v.State)
}

func TestLifecycleTransitions(t *testing.T) {
	home := t.TempDir()
	b := &fakeBackend{}
	s := testService(t, b, newStore(t, home), home)
	ctx := t.Context()
	var stages []string
	v, err := s.Create(ctx, Self(), api.VMCreateRequest{Name: "v1", VCPU: 1, MemoryMiB: 128}, func(st string) { stages = append(stages, st) })
	if err != nil {
		t.Fatal(err)
	}
	if v.State != string(Running) || v.PID == 0 || !vmmProcess(v.PID, v.Dir) {
		t.Fatalf("created: %+v", v)
	}
	if fmt.Sprint(stages) != "[disk vmm boot]" {
		t.Errorf("stages %v", stages)
	}
	// Refused transitions say so and change nothing.
	for _, c := range []struct {
		what string
		do   func() error
		want error
	}{
		{"start a running VM", func() error { _, err := s.Start(ctx, Self(), "v1", nil); return err }, ErrInvalidState},
		{"resume a running VM", func() error { _, err := s.Resume(ctx, Self(), "v1"); return err }, ErrInvalidState},
		{"remove a running VM", func() error { _, err := s.Remove(ctx, Self(), "v1", false); return err }, api.ErrConflict},
		{"create a taken name", func() error { _, err := s.Create(ctx, Self(), api.VMCreateRequest{Name: "v1"}, nil); return err }, store.ErrExists},
		{"stop a VM that is not there", func() error { _, err := s.Stop(ctx, Self(), "nope"); return err }, store.ErrNotFound},
	} {
		if err := c.do(); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.what, err, c.want)
		}
		if st := state(t, s, "v1"); st != Running {
			t.Fatalf("after %s: %s", c.what, st)
		}
	}

	// Pause and resume freeze the VMM's process for real.
	if _, err := s.Pause(ctx, Self(), "v1"); err != nil || state(t, s, "v1") != Paused {
		t.Fatalf("pause: %v, %s", err, state(t, s, "v1"))
	}
	if _, err := s.Pause(ctx, Self(), "v1"); !errors.Is(err, ErrInvalidState) {
		t.Errorf("pause a paused VM: %v", err)
	}
	if _, err := s.Resume(ctx, Self(), "v1"); err != nil || state(t, s, "v1") != Running {
		t.Fatalf("resume: %v", err)
	}

	// A graceful stop goes through the agent: the guest powers off.
	pid := v.PID
	out, err := s.Stop(ctx, Self(), "v1")
	if err != nil || out.State != string(Stopped) || out.PID != 0 {
		t.Fatalf("stop: %+v, %v", out, err)
	}
	if vmmProcess(pid, v.Dir) {
		t.Error("the VMM outlived its stop")
	}
	if _, err := s.Stop(ctx, Self(), "v1"); !errors.Is(err, ErrInvalidState) {
		t.Errorf("stop a stopped VM: %v", err)
	}

	// Start, restart and kill.
	if out, err = s.Start(ctx, Self(), "v1", nil); err != nil || out.State != string(Running) {
		t.Fatalf("start: %+v, %v", out, err)
	}
	first := out.PID
	if out, err = s.Restart(ctx, Self(), "v1", nil); err != nil || out.State != string(Running) || out.PID == first || vmmProcess(first, v.Dir) {
		t.Fatalf("restart: %+v, %v (old VMM alive: %v)", out, err, vmmProcess(first, v.Dir))
	}
	if out, err = s.Kill(ctx, Self(), "v1"); err != nil || out.State != string(Stopped) {
		t.Fatalf("kill: %+v, %v", out, err)
	}
	if b.starts.Load() != 3 {
		t.Errorf("%d VMM starts, want 3", b.starts.Load())
	}

	// Removal leaves nothing.
	if _, err := s.Remove(ctx, Self(), "v1", false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(v.Dir); !os.IsNotExist(err) {
		t.Errorf("VM directory after rm: %v", err)
	}
	if _, err := s.Get(ctx, Self(), "v1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("VM after rm: %v", err)
	}
}

// A start that fails, or a guest that never becomes ready, ends in
// state error with the reason, and nothing of the VMM is left; the VM
// starts once the cause is gone.
func TestFailedStartsEndInError(t *testing.T) {
	home := t.TempDir()
	b := &fakeBackend{}
	s := testService(t, b, newStore(t, home), home)
	ctx := t.Context()

	b.setFail(errors.New("no such VMM"))
	_, err := s.Create(ctx, Self(), api.VMCreateRequest{Name: "f1"}, nil)
	if !errors.Is(err, ErrStart) {
		t.Fatalf("create with a VMM that does not start: %v", err)
	}
	v, _ := s.Get(ctx, Self(), "f1")
	if State(v.State) != Error || v.Error == "" || v.PID != 0 {
		t.Errorf("after a failed start: %+v", v)
	}

	b.setFail(nil)
	b.neverReady.Store(true)
	_, err = s.Start(ctx, Self(), "f1", nil)
	if !errors.Is(err, ErrStart) {
		t.Fatalf("a guest that never becomes ready: %v", err)
	}
	v, _ = s.Get(ctx, Self(), "f1")
	if State(v.State) != Error || len(vmmProcesses(v.Dir)) != 0 {
		t.Errorf("after a boot that never got ready: %+v, VMMs left %v", v, vmmProcesses(v.Dir))
	}

	b.neverReady.Store(false)
	if v, err := s.Start(ctx, Self(), "f1", nil); err != nil || State(v.State) != Running {
		t.Fatalf("start after the cause went: %+v, %v", v, err)
	}
	s.Remove(ctx, Self(), "f1", true)
}

// A new service (a restarted daemon) adopts the VMs still running and
// records those whose VMM died while it was away as stopped.
func TestReconcileAdoptsRunningVMs(t *testing.T) {
	home := t.TempDir()
	st := newStore(t, home)
	b := &fakeBackend{}
	s1 := testService(t, b, st, home)
	ctx := t.Context()
	alive, err := s1.Create(ctx, Self(), api.VMCreateRequest{Name: "alive"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dead, err := s1.Create(ctx, Self(), api.VMCreateRequest{Name: "dead"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s1.Close() // the daemon goes; the VMMs run on
	syscall.Kill(dead.PID, syscall.SIGKILL)
	for vmmProcess(dead.PID, dead.Dir) {
		time.Sleep(10 * time.Millisecond)
	}

	s2 := testService(t, b, st, home)
	if err := s2.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := s2.Get(ctx, Self(), "alive"); State(v.State) != Running || v.PID != alive.PID {
		t.Errorf("the running VM after a restart: %+v", v)
	}
	if st := state(t, s2, "dead"); st != Stopped {
		t.Errorf("the VM whose VMM died: %s", st)
	}
	// The adopted VM is as good as one started here: it stops.
	if v, err := s2.Stop(ctx, Self(), "alive"); err != nil || State(v.State) != Stopped || vmmProcess(alive.PID, alive.Dir) {
		t.Fatalf("stop of an adopted VM: %+v, %v", v, err)
	}
}

// No code sets a VM's state but the state machine's transition: every
// store.SetVMState call in the package is inside transition.
func TestOnlyTransitionSetsState(t *testing.T) {
	fset := token.NewFileSet()
	files, _ := filepath.Glob("*.go")
	for _, p := range files {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				if sel, ok := n.(*ast.SelectorExpr); ok && sel.Sel.Name == "SetVMState" && fn.Name.Name != "transition" {
					t.Errorf("%s: %s sets a VM's state directly: go through transition", fset.Position(sel.Pos()), fn.Name.Name)
				}
				return true
			})
		}
	}
}
