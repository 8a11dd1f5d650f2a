package vsockagent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// execIO is where a command's input, output, signals and status go: an
// agent stream, or an SSH session channel.
type execIO interface {
	io.Reader // standard input
	io.Writer // standard output (and the terminal)
	StderrWriter() io.Writer
	CloseWrite() error
	CloseStderr() error
	Resizes() <-chan Winsize
	Signals() <-chan int
	Done() <-chan struct{}
	SendExit(Exit) error
	Fail(error)
}

// exec runs Req.Argv with the image's environment, in a PTY when asked.
func (a *Agent) exec(st *Stream) { a.run(st.Req, st) }

// command is an exec request resolved in the guest: who runs what,
// where, with which environment.
type command struct {
	path string
	argv []string
	env  []string
	dir  string
	id   identity
	attr *os.ProcAttr
}

// prepare resolves req's user, environment, working directory and
// program. Its errors are *AgentErrors: no_user, invalid (no command,
// a missing working directory), not_found (no such program).
func (a *Agent) prepare(req Request) (command, error) {
	if len(req.Argv) == 0 {
		return command{}, agentErr(CodeInvalid, "exec: no command")
	}
	id, err := lookupIdentity(a.opts.Root, req.User)
	if err != nil {
		return command{}, err
	}
	defEnv, defDir := a.execDefaults()
	env := mergeEnv([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + id.home, "USER=" + id.name}, defEnv, req.Env)
	if req.TTY {
		env = mergeEnv(env, []string{"TERM=xterm-256color"}, envWith(req.Env, "TERM"))
	}
	dir := req.Dir
	if dir == "" {
		dir = defDir
	}
	if dir == "" {
		// The user's home, as a login would; / when the image has none.
		dir = id.home
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			dir = "/"
		}
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return command{}, agentErr(CodeInvalid, "working directory %s does not exist in the guest", dir)
	}
	path, err := lookPath(req.Argv[0], env)
	if err != nil {
		return command{}, &AgentError{Code: CodeNotFound, Message: err.Error()}
	}
	attr := &os.ProcAttr{Dir: dir, Env: env, Sys: &syscall.SysProcAttr{Credential: id.credential(req.User)}}
	return command{path: path, argv: req.Argv, env: env, dir: dir, id: id, attr: attr}, nil
}

// wantStdin is whether req gives its process an input (default yes).
func wantStdin(req Request) bool { return req.Stdin == nil || *req.Stdin }

// run runs req's command with its I/O on st.
func (a *Agent) run(req Request, st execIO) {
	cmd, err := a.prepare(req)
	if err != nil {
		st.Fail(err)
		return
	}
	path, attr := cmd.path, cmd.attr
	var ptm *os.File
	var closeAfterStart []*os.File
	var outputs sync.WaitGroup
	var stdinW *os.File
	var copyOutputs func()
	if req.TTY {
		var pts *os.File
		if ptm, pts, err = openPTY(); err != nil {
			st.Fail(fmt.Errorf("opening a terminal: %w", err))
			return
		}
		defer ptm.Close()
		if req.Rows > 0 && req.Cols > 0 {
			unix.IoctlSetWinsize(int(ptm.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: req.Rows, Col: req.Cols})
		}
		attr.Files = []*os.File{pts, pts, pts}
		attr.Sys.Setsid, attr.Sys.Setctty, attr.Sys.Ctty = true, true, 0
		closeAfterStart = append(closeAfterStart, pts)
	} else {
		inR, inW, err1 := os.Pipe()
		outR, outW, err2 := os.Pipe()
		errR, errW, err3 := os.Pipe()
		if err := errors.Join(err1, err2, err3); err != nil {
			st.Fail(err)
			return
		}
		attr.Files = []*os.File{inR, outW, errW}
		attr.Sys.Setpgid = true
		closeAfterStart = append(closeAfterStart, inR, outW, errW)
		stdinW = inW
		if !wantStdin(req) {
			null, err := os.Open(os.DevNull)
			if err != nil {
				st.Fail(err)
				return
			}
			attr.Files[0] = null
			closeAfterStart = append(closeAfterStart, null)
			inW.Close()
			stdinW = nil
		}
		outR0, errR0 := outR, errR
		copyOutputs = func() {
			outputs.Add(2)
			go func() { defer outputs.Done(); Copy(st, outR0); outR0.Close() }()
			go func() { defer outputs.Done(); io.Copy(st.StderrWriter(), errR0); errR0.Close() }()
		}
		defer func() {
			if copyOutputs != nil { // never started
				outR0.Close()
				errR0.Close()
			}
		}()
	}
	statusCh, pid, err := a.start(path, req.Argv, attr)
	for _, f := range closeAfterStart {
		f.Close()
	}
	if err != nil {
		if stdinW != nil {
			stdinW.Close()
		}
		st.Fail(startErr(req.Argv[0], err))
		return
	}
	// The pid before any output, to a host that asked (FrameStarted).
	if s, ok := st.(interface{ SendStarted(int) error }); ok && req.ReportPID {
		s.SendStarted(pid)
	}
	if copyOutputs != nil {
		copyOutputs()
		copyOutputs = nil
	}
	// Input: the stream into the process (or its terminal).
	if req.TTY {
		outputs.Add(1)
		go func() { defer outputs.Done(); copyPTY(st, ptm) }()
		go Copy(ptm, st)
	} else if stdinW != nil {
		go func() { Copy(stdinW, st); stdinW.Close() }()
	}
	var timeout <-chan time.Time
	if req.TimeoutMs > 0 {
		t := time.NewTimer(time.Duration(req.TimeoutMs) * time.Millisecond)
		defer t.Stop()
		timeout = t.C
	}
	timedOut := false
	var ws unix.WaitStatus
	for done := false; !done; {
		select {
		case ws = <-statusCh:
			done = true
		case sig := <-st.Signals():
			unix.Kill(-pid, syscall.Signal(sig))
		case w := <-st.Resizes():
			if ptm != nil {
				unix.IoctlSetWinsize(int(ptm.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: w.Rows, Col: w.Cols})
			}
		case <-timeout:
			timedOut = true
			unix.Kill(-pid, unix.SIGKILL)
		case <-st.Done():
			// The host went away or gave up: so does the command.
			unix.Kill(-pid, unix.SIGKILL)
			<-statusCh
			return
		}
	}
	// A terminal's output ends when its last holder closes it; a
	// background job may keep it open, so do not wait for ever.
	waitTimeout(&outputs, 500*time.Millisecond)
	st.CloseWrite()
	st.CloseStderr()
	e := Exit{Code: ws.ExitStatus(), TimedOut: timedOut}
	if ws.Signaled() {
		e.Code, e.Signal = 128+int(ws.Signal()), unix.SignalName(ws.Signal())
	}
	st.SendExit(e)
}

// startErr is why a program could not start, coded: a missing one is
// not_found, one that is not executable not_exec.
func startErr(name string, err error) error {
	ae := &AgentError{Message: fmt.Sprintf("starting %s: %v", name, err)}
	switch {
	case errors.Is(err, syscall.ENOENT):
		ae.Code = CodeNotFound
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.ENOEXEC):
		ae.Code = CodeNotExec
	}
	return ae
}

// start starts the process and returns where its wait status arrives.
func (a *Agent) start(path string, argv []string, attr *os.ProcAttr) (<-chan unix.WaitStatus, int, error) {
	if a.opts.Reaper != nil {
		var p *os.Process
		ch, err := a.opts.Reaper.Start(func() (int, error) {
			var err error
			p, err = os.StartProcess(path, argv, attr)
			if err != nil {
				return 0, err
			}
			return p.Pid, nil
		})
		if err != nil {
			return nil, 0, err
		}
		pid := p.Pid
		p.Release()
		return ch, pid, nil
	}
	p, err := os.StartProcess(path, argv, attr)
	if err != nil {
		return nil, 0, err
	}
	ch := make(chan unix.WaitStatus, 1)
	go func() {
		state, err := p.Wait()
		if err == nil {
			ch <- unix.WaitStatus(state.Sys().(syscall.WaitStatus))
		} else {
			ch <- unix.WaitStatus(255 << 8)
		}
	}()
	return ch, p.Pid, nil
}

// waitTimeout waits for wg at most d and reports whether it is done.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// copyPTY copies a terminal's output; EIO is its end of file (no one
// holds the other side any more).
func copyPTY(w io.Writer, ptm *os.File) {
	buf := make([]byte, 32<<10)
	for {
		n, err := ptm.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// openPTY opens a new pseudo-terminal pair.
func openPTY() (ptm, pts *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	ptm = os.NewFile(uintptr(fd), "/dev/ptmx")
	pts, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		ptm.Close()
		return nil, nil, err
	}
	return ptm, pts, nil
}

// mergeEnv layers environments: later lists override earlier names.
func mergeEnv(layers ...[]string) []string {
	var order []string
	vals := map[string]string{}
	for _, l := range layers {
		for _, kv := range l {
			k, _, _ := strings.Cut(kv, "=")
			if _, ok := vals[k]; !ok {
				order = append(order, k)
			}
			vals[k] = kv
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, vals[k])
	}
	return out
}

func envWith(env []string, key string) []string {
	var out []string
	for _, kv := range env {
		if strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}

func userName(spec string) string {
	if spec == "" {
		return "root"
	}
	u, _, _ := strings.Cut(spec, ":")
	return u
}

// lookPath finds a command in the PATH of env, as a shell would.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: command not found in the guest (PATH=%s)", name, path)
}

// Reaper hands the agent its children's statuses when the agent lives
// inside PID 1, whose reaping loop collects every child.
type Reaper struct {
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
}

// NewReaper makes a reaper; PID 1 calls Reaped for each child it reaps.
func NewReaper() *Reaper { return &Reaper{waiters: map[int]chan unix.WaitStatus{}} }

// Start runs start (which starts one process) while holding the lock
// Reaped takes, so a child that exits at once is still claimed.
func (r *Reaper) Start(start func() (int, error)) (<-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err != nil {
		return nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[pid] = ch
	return ch, nil
}

// Reaped delivers a reaped child's status to the agent if it is one of
// the agent's; it reports whether it was.
func (r *Reaper) Reaped(pid int, ws unix.WaitStatus) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch, ok := r.waiters[pid]
	if ok {
		ch <- ws
		delete(r.waiters, pid)
	}
	return ok
}
