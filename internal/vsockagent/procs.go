package vsockagent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Detached processes (exec with "detach": true) belong to the agent, not
// to the stream that started them: E2B's processes outlive their stream,
// a client's disconnect and the agent session, and are addressed by pid.
// A stream attached to one (the exec's own, or an attach) receives its
// live output and, at the end, its exit; the stream's end only detaches.

// retainExit is how long a detached process's exit status stays for a
// late attach (E2B keeps it 30 s).
const retainExit = 30 * time.Second

// retainOverride, when positive, replaces retainExit: tests shorten the
// retention. Atomic, since exits of earlier tests' processes read it.
var retainOverride atomic.Int64

func retention() time.Duration {
	if d := time.Duration(retainOverride.Load()); d > 0 {
		return d
	}
	return retainExit
}

// attachBuffer bounds the output queued for one attacher beyond its
// stream's window, and attachStall how long the process's output waits
// for an attacher whose queue is full. The process's output is read
// as it comes and fanned out to every attacher's queue. An attacher
// that reads, however slowly, throttles the process to its pace and
// misses nothing (as envd's consumers do): a pure byte bound would drop
// a live reader whenever the process writes faster than the channel
// carries (cat of a big file). One that frees no room for attachStall
// is dropped with ERROR overrun, rather than served output with a hole
// in it, and the process goes on: a stuck attacher pauses the process
// (and so the others' output) for at most attachStall, once.
const (
	attachBuffer = 1 << 20
	attachStall  = 5 * time.Second
)

// stallOverride, when positive, replaces attachStall (tests).
var stallOverride atomic.Int64

func stallBound() time.Duration {
	if d := time.Duration(stallOverride.Load()); d > 0 {
		return d
	}
	return attachStall
}

// ProcInfo describes a live detached process (op procs).
type ProcInfo struct {
	PID  int      `json:"pid"`
	Argv []string `json:"argv"`
	// Env is what the request added to the environment, as envd lists it.
	Env []string `json:"env"`
	Dir string   `json:"dir"`
	Tag string   `json:"tag,omitempty"`
	TTY bool     `json:"tty"`
}

// procTable holds the agent's detached processes, live and recently
// exited, across sessions.
type procTable struct {
	mu    sync.Mutex
	procs map[int]*proc
}

func newProcTable() *procTable { return &procTable{procs: map[int]*proc{}} }

func (t *procTable) get(pid int) *proc {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.procs[pid]
}

func (t *procTable) add(p *proc) {
	t.mu.Lock()
	t.procs[p.info.PID] = p
	t.mu.Unlock()
}

// forget drops p after its retention, unless its pid was reused since.
func (t *procTable) forget(p *proc) {
	t.mu.Lock()
	if t.procs[p.info.PID] == p {
		delete(t.procs, p.info.PID)
	}
	t.mu.Unlock()
}

// live lists the processes that have not exited, by pid.
func (t *procTable) live() []ProcInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := []ProcInfo{}
	for _, p := range t.procs {
		p.mu.Lock()
		if p.exit == nil {
			out = append(out, p.info)
		}
		p.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}

// proc is one detached process.
type proc struct {
	info ProcInfo
	ptm  *os.File // its terminal, when it has one

	mu        sync.Mutex
	stdin     *os.File // the write end of its stdin pipe; nil for /dev/null or once closed
	attachers map[*attacher]bool
	exit      *Exit        // set once it has exited and its output is drained
	outBytes  atomic.Int64 // output read so far
}

// output fans b out to every attacher; it waits for a full one at most
// attachStall (see attachBuffer).
func (p *proc) output(stderr bool, b []byte) {
	p.mu.Lock()
	ats := make([]*attacher, 0, len(p.attachers))
	for at := range p.attachers {
		ats = append(ats, at)
	}
	p.mu.Unlock()
	for _, at := range ats {
		at.push(stderr, b)
	}
}

// attach adds a stream's attacher; false when the process has exited
// (the caller reports the retained exit instead).
func (p *proc) attach(at *attacher) (Exit, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exit != nil {
		return *p.exit, false
	}
	p.attachers[at] = true
	return Exit{}, true
}

func (p *proc) detach(at *attacher) {
	p.mu.Lock()
	delete(p.attachers, at)
	p.mu.Unlock()
}

// signal sends sig to the process's group when it leads one (every
// detached process does: it starts in a session of its own), so its
// children get it too; otherwise to the process alone.
func (p *proc) signal(sig syscall.Signal) error {
	pid := p.info.PID
	if pgid, err := unix.Getpgid(pid); err == nil && pgid == pid {
		return unix.Kill(-pid, sig)
	}
	return unix.Kill(pid, sig)
}

// finished records the exit and hands it to every attacher.
func (p *proc) finished(e Exit) {
	p.mu.Lock()
	p.exit = &e
	ats := p.attachers
	p.attachers = nil
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	p.mu.Unlock()
	for at := range ats {
		at.finish(e)
	}
}

// chunk is output queued for an attacher.
type chunk struct {
	stderr bool
	b      []byte
}

// attacher carries a detached process's output to one stream: the
// process's readers push into its queue, its own goroutine drains the
// queue into the stream at the stream's pace.
type attacher struct {
	st   *Stream
	pid  int
	mu   sync.Mutex
	cond *sync.Cond
	q    []chunk
	n    int   // bytes queued
	exit *Exit // the process ended: send it after the queue
	over bool  // its queue stayed full for attachStall: dropped
	gone bool  // the stream ended: the host detached
}

func newAttacher(st *Stream, pid int) *attacher {
	at := &attacher{st: st, pid: pid}
	at.cond = sync.NewCond(&at.mu)
	return at
}

// push queues b, waiting up to attachStall for room; an attacher that
// makes none is dropped: its stream fails with overrun, which also
// ends a write of its stuck in the stream's window.
func (at *attacher) push(stderr bool, b []byte) {
	at.mu.Lock()
	defer at.mu.Unlock()
	if at.n+len(b) > attachBuffer && !at.over && !at.gone && at.exit == nil {
		stall := stallBound()
		deadline := time.Now().Add(stall)
		t := time.AfterFunc(stall, func() {
			at.mu.Lock()
			at.cond.Broadcast()
			at.mu.Unlock()
		})
		defer t.Stop()
		for at.n+len(b) > attachBuffer && !at.over && !at.gone && time.Now().Before(deadline) {
			at.cond.Wait()
		}
		if at.n+len(b) > attachBuffer && !at.over && !at.gone {
			at.over = true
			at.cond.Broadcast()
			go at.st.Fail(agentErr(CodeOverrun, "detached from process %d: this stream read none of its output for %s", at.pid, stall))
			return
		}
	}
	if at.over || at.gone || at.exit != nil {
		return
	}
	at.q = append(at.q, chunk{stderr, b})
	at.n += len(b)
	at.cond.Broadcast()
}

func (at *attacher) finish(e Exit) {
	at.mu.Lock()
	at.exit = &e
	at.cond.Broadcast()
	at.mu.Unlock()
}

// serve sends STARTED, then the queued output as it comes, then the
// exit, until the process ends or the stream does; meanwhile SIGNAL
// and RESIZE frames on the stream act on the process. It returns when
// the stream is over, the process detached from it.
func (at *attacher) serve(p *proc) {
	defer p.detach(at)
	st := at.st
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case sig := <-st.Signals():
				p.signal(syscall.Signal(sig))
			case w := <-st.Resizes():
				if p.ptm != nil {
					unix.IoctlSetWinsize(int(p.ptm.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: w.Rows, Col: w.Cols})
				}
			case <-st.Done():
				at.mu.Lock()
				at.gone = true
				at.cond.Broadcast()
				at.mu.Unlock()
				return
			case <-stop:
				return
			}
		}
	}()
	// Input on the stream is not the process's (that is op stdin): read
	// and drop it, so the host's window never closes.
	go io.Copy(io.Discard, st)
	if st.SendStarted(p.info.PID) != nil {
		return
	}
	stderr := st.StderrWriter()
	for {
		at.mu.Lock()
		for len(at.q) == 0 && at.exit == nil && !at.over && !at.gone {
			at.cond.Wait()
		}
		switch {
		case at.gone:
			at.mu.Unlock()
			return
		case at.over:
			at.mu.Unlock()
			return // push fails the stream
		case len(at.q) > 0:
			c := at.q[0]
			at.q = at.q[1:]
			at.n -= len(c.b)
			at.cond.Broadcast() // room for a waiting push
			at.mu.Unlock()
			w := io.Writer(st)
			if c.stderr {
				w = stderr
			}
			if _, err := w.Write(c.b); err != nil {
				return
			}
		default: // exited, and everything before the exit is sent
			e := *at.exit
			at.mu.Unlock()
			st.CloseWrite()
			st.CloseStderr()
			st.SendExit(e)
			return
		}
	}
}

// startDetached runs req's command as a detached process with st as its
// first attacher. A program that does not exist (or may not run) is an
// exit status, 127 (126), as a shell reports it, not an ERROR: E2B's
// "command not found" is an exit code.
func (a *Agent) startDetached(st *Stream) {
	req := st.Req
	cmd, err := a.prepare(req)
	if IsCode(err, CodeNotFound) {
		st.SendExit(Exit{Code: 127, Error: fmt.Sprintf("%s: not found", req.Argv[0])})
		return
	}
	if err != nil {
		st.Fail(err)
		return
	}
	p := &proc{info: ProcInfo{Argv: req.Argv, Env: append([]string{}, req.Env...), Dir: cmd.dir, Tag: req.Tag, TTY: req.TTY}, attachers: map[*attacher]bool{}}
	at := newAttacher(st, 0)
	p.attachers[at] = true

	attr := cmd.attr
	// A session of its own: no terminal of the agent's reaches it, and
	// it leads its process group, which signal and the timeout kill.
	attr.Sys.Setsid = true
	// The child's ends, closed once it has them (also on a failure
	// before): the readers' EOF comes when the process's ends close.
	var closeAfterStart []*os.File
	closeChild := func() {
		for _, f := range closeAfterStart {
			f.Close()
		}
		closeAfterStart = nil
	}
	defer closeChild()
	var outs []*os.File // read ends: stdout, stderr (or the terminal)
	if req.TTY {
		ptm, pts, err := openPTY()
		if err != nil {
			st.Fail(fmt.Errorf("opening a terminal: %w", err))
			return
		}
		if req.Rows > 0 && req.Cols > 0 {
			unix.IoctlSetWinsize(int(ptm.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: req.Rows, Col: req.Cols})
		}
		attr.Files = []*os.File{pts, pts, pts}
		attr.Sys.Setctty, attr.Sys.Ctty = true, 0
		closeAfterStart = append(closeAfterStart, pts)
		p.ptm = ptm
		outs = []*os.File{ptm}
	} else {
		outR, outW, err1 := os.Pipe()
		errR, errW, err2 := os.Pipe()
		var in *os.File
		var err3 error
		if wantStdin(req) {
			in, p.stdin, err3 = os.Pipe()
		} else {
			in, err3 = os.Open(os.DevNull)
		}
		if err := errors.Join(err1, err2, err3); err != nil {
			st.Fail(err)
			return
		}
		attr.Files = []*os.File{in, outW, errW}
		closeAfterStart = append(closeAfterStart, in, outW, errW)
		outs = []*os.File{outR, errR}
	}
	statusCh, pid, err := a.start(cmd.path, cmd.argv, attr)
	closeChild()
	if err != nil {
		for _, f := range append(outs, p.stdin) {
			if f != nil {
				f.Close()
			}
		}
		switch startErr(req.Argv[0], err).(*AgentError).Code {
		case CodeNotFound:
			st.SendExit(Exit{Code: 127, Error: fmt.Sprintf("%s: not found", req.Argv[0])})
			return
		case CodeNotExec:
			st.SendExit(Exit{Code: 126, Error: fmt.Sprintf("%s: cannot execute: %v", req.Argv[0], errors.Unwrap(err))})
			return
		}
		st.Fail(startErr(req.Argv[0], err))
		return
	}
	p.info.PID, at.pid = pid, pid
	a.procs.add(p)
	var outputs sync.WaitGroup
	for i, f := range outs {
		outputs.Add(1)
		go func() {
			defer outputs.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := f.Read(buf)
				if n > 0 {
					p.output(i == 1, append([]byte(nil), buf[:n]...))
					p.outBytes.Add(int64(n))
				}
				if err != nil { // EOF; EIO from a terminal nobody holds
					if p.ptm == nil {
						f.Close()
					}
					return
				}
			}
		}()
	}
	go a.waitDetached(p, statusCh, &outputs, req.TimeoutMs)
	at.serve(p)
}

// waitDetached waits for p's exit (killing its group at the timeout),
// lets its output drain, records the exit and forgets it retainExit
// later.
func (a *Agent) waitDetached(p *proc, statusCh <-chan unix.WaitStatus, outputs *sync.WaitGroup, timeoutMs int64) {
	var timeout <-chan time.Time
	if timeoutMs > 0 {
		t := time.NewTimer(time.Duration(timeoutMs) * time.Millisecond)
		defer t.Stop()
		timeout = t.C
	}
	timedOut := false
	var ws unix.WaitStatus
	for done := false; !done; {
		select {
		case ws = <-statusCh:
			done = true
		case <-timeout:
			timedOut = true
			unix.Kill(-p.info.PID, unix.SIGKILL)
		}
	}
	// Output still held open by a background child does not hold back
	// the exit (as with an attached exec), but output still flowing to
	// a slow attacher is not cut off either: wait while it moves.
	for {
		before := p.outBytes.Load()
		if waitTimeout(outputs, 500*time.Millisecond) || p.outBytes.Load() == before {
			break
		}
	}
	e := Exit{Code: ws.ExitStatus(), TimedOut: timedOut}
	if ws.Signaled() {
		e.Code, e.Signal = 128+int(ws.Signal()), unix.SignalName(ws.Signal())
	}
	p.finished(e)
	if p.ptm != nil {
		p.ptm.Close()
	}
	time.AfterFunc(retention(), func() { a.procs.forget(p) })
}
