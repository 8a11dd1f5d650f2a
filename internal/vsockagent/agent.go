package vsockagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/filesync"
)

// Options are what the agent needs from whoever starts it.
type Options struct {
	// Version and Image (the image the VM was made from) are reported
	// in the Hello.
	Version, Image string
	// Env and Dir are the image's environment and working directory,
	// the defaults of every exec (like `docker exec`).
	Env []string
	Dir string
	// Reaper is set when the agent runs inside PID 1, which reaps every
	// child: the agent's own children's statuses come through it.
	Reaper *Reaper
	// PowerOff asks the VM to shut down cleanly.
	PowerOff func()
	// DataDir is where the VM's writable disk is mounted (its SSH keys
	// live there); "" means no SSH server.
	DataDir string
	// Reidentify makes a VM restored from a snapshot its own machine:
	// host name, /etc files, network (see Identity). The agent itself
	// sets the clock, the entropy pool and the SSH host key first.
	Reidentify func(Identity) error
	// Release starts the image's command the init stage holds (kernel
	// parameter banger.hold) while the host snapshots a warm template.
	Release func()
}

// Agent serves streams: exec, files, ports, connections.
type Agent struct {
	opts Options
	ssh  *SSH // nil without a host key
}

// NewAgent makes an agent.
func NewAgent(opts Options) *Agent {
	if opts.PowerOff == nil {
		opts.PowerOff = defaultPowerOff
	}
	return &Agent{opts: opts}
}

// defaultPowerOff signals PID 1: SIGTERM when that is banger's init
// stage, systemd's poweroff signal (SIGRTMIN+4) otherwise.
func defaultPowerOff() {
	if os.Getpid() == 1 {
		unix.Kill(1, unix.SIGTERM)
		return
	}
	unix.Kill(1, syscall.Signal(38))
}

// Handle serves one stream; it returns when the stream is over.
func (a *Agent) Handle(st *Stream) {
	switch st.Req.Op {
	case "exec":
		a.exec(st)
	case "put":
		// The host's user is root in this VM anyway: owners (as root)
		// and setuid bits are kept, as `cp -a` by root would.
		err := ExtractTar(st, st.Req.Path, ExtractOptions{Owners: os.Geteuid() == 0, SetID: true})
		st.SendExit(exitFor(err))
	case "get":
		err := WriteTar(st, st.Req.Path)
		if err == nil {
			err = st.CloseWrite()
		}
		st.SendExit(exitFor(err))
	case "dial":
		a.dial(st)
	case "ssh":
		if a.ssh == nil {
			st.Fail(errors.New("this VM has no SSH host key: it was created by an older banger; recreate it"))
			return
		}
		a.ssh.ServeConn(streamConn{st})
	case "ports":
		ports, err := ListeningPorts("/proc")
		if err == nil {
			err = json.NewEncoder(st).Encode(ports)
			st.CloseWrite()
		}
		st.SendExit(exitFor(err))
	case "filesync":
		// A synced mount (-v on Firecracker): it runs until the host
		// ends it.
		err := filesync.Guest(context.Background(), st, st.Req.Path, filesync.GuestOptions{
			Log: func(s string) { fmt.Fprintf(os.Stderr, "banger-agent: sync %s: %s\n", st.Req.Path, s) },
		})
		st.SendExit(exitFor(err))
	case "sync":
		unix.Sync()
		st.SendExit(Exit{})
	case "identity":
		err := a.reidentify(st)
		if err == nil {
			a.release()
		}
		st.SendExit(exitFor(err))
	case "release":
		a.release()
		st.SendExit(Exit{})
	case "poweroff":
		unix.Sync()
		st.SendExit(Exit{})
		go a.opts.PowerOff()
	default:
		st.Fail(fmt.Errorf("the agent does not know %q: the VM's agent is older than this banger; recreate the VM's image", st.Req.Op))
	}
}

func (a *Agent) release() {
	if a.opts.Release != nil {
		a.opts.Release()
	}
}

func exitFor(err error) Exit {
	if err != nil {
		return Exit{Code: 1, Error: err.Error()}
	}
	return Exit{}
}

// dial connects to Req.Addr inside the guest (127.0.0.1:PORT for a
// forwarded port) and relays bytes both ways.
func (a *Agent) dial(st *Stream) {
	c, err := net.DialTimeout("tcp", st.Req.Addr, 5*time.Second)
	if err != nil {
		st.Fail(fmt.Errorf("connecting to %s in the guest: %w", st.Req.Addr, err))
		return
	}
	defer c.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		Copy(c, st)
		c.(*net.TCPConn).CloseWrite()
	}()
	Copy(st, c)
	st.CloseWrite()
	wg.Wait()
	st.SendExit(Exit{})
}

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

// run runs req's command with its I/O on st.
func (a *Agent) run(req Request, st execIO) {
	if len(req.Argv) == 0 {
		st.Fail(errors.New("exec: no command"))
		return
	}
	uid, gid, home, err := LookupUser("", req.User)
	if err != nil {
		st.Fail(err)
		return
	}
	env := mergeEnv([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + home, "USER=" + userName(req.User)}, a.opts.Env, req.Env)
	if req.TTY {
		env = mergeEnv(env, []string{"TERM=xterm-256color"}, envWith(req.Env, "TERM"))
	}
	dir := req.Dir
	if dir == "" {
		dir = a.opts.Dir
	}
	if dir == "" {
		// The user's home, as a login would; / when the image has none.
		dir = home
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			dir = "/"
		}
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		st.Fail(fmt.Errorf("working directory %s does not exist in the guest", dir))
		return
	}
	path, err := lookPath(req.Argv[0], env)
	if err != nil {
		st.Fail(err)
		return
	}
	attr := &os.ProcAttr{Dir: dir, Env: env, Sys: &syscall.SysProcAttr{}}
	if uid != 0 || gid != 0 {
		attr.Sys.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
	}
	var ptm *os.File
	var closeAfterStart []*os.File
	var outputs sync.WaitGroup
	var stdinW *os.File
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
		outputs.Add(2)
		go func() { defer outputs.Done(); Copy(st, outR); outR.Close() }()
		go func() { defer outputs.Done(); io.Copy(st.StderrWriter(), errR); errR.Close() }()
	}
	statusCh, pid, err := a.start(path, req.Argv, attr)
	for _, f := range closeAfterStart {
		f.Close()
	}
	if err != nil {
		if stdinW != nil {
			stdinW.Close()
		}
		outputs.Wait()
		st.Fail(fmt.Errorf("starting %s: %w", req.Argv[0], err))
		return
	}
	// Input: the stream into the process (or its terminal).
	if req.TTY {
		outputs.Add(1)
		go func() { defer outputs.Done(); copyPTY(st, ptm) }()
		go Copy(ptm, st)
	} else {
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

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
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
