package vsockagent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Stream is one multiplexed exchange: a command, a copy, a connection.
// The opener writes input and reads output; the served side the reverse.
type Stream struct {
	s   *Session
	id  uint32
	Req Request

	out, errOut *pipe // what this side reads: output (or input) and stderr
	mu          sync.Mutex
	cond        *sync.Cond
	credit      int
	unacked     int
	closed      bool
	closeErr    error
	exit        chan Exit
	started     chan int
	exited      chan struct{} // closed when EXIT arrives
	resizes     chan Winsize
	signals     chan int
	done        chan struct{}
	// stopCtx stops the watch of the opener's context (closeWhenDone).
	stopCtx func() bool
}

func newStream(s *Session, id uint32, req Request) *Stream {
	st := &Stream{s: s, id: id, Req: req, out: newPipe(), errOut: newPipe(), credit: Window,
		exit: make(chan Exit, 1), started: make(chan int, 1), exited: make(chan struct{}), resizes: make(chan Winsize, 8), signals: make(chan int, 8), done: make(chan struct{})}
	st.cond = sync.NewCond(&st.mu)
	return st
}

// closeWhenDone closes the stream, on both sides, once ctx ends.
func (st *Stream) closeWhenDone(ctx context.Context) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.closed {
		st.stopCtx = context.AfterFunc(ctx, func() { st.closeWith(context.Cause(ctx)) })
	}
}

// send writes a frame of the stream, unless the stream ends while it
// waits for the channel.
func (st *Stream) send(t byte, payload []byte) error {
	err := st.s.send(st.done, t, st.id, payload)
	if errors.Is(err, errAbandoned) {
		return st.endErr()
	}
	return err
}

// endErr is what a write to the ended stream returns.
func (st *Stream) endErr() error {
	st.mu.Lock()
	err := st.closeErr
	st.mu.Unlock()
	if err == io.EOF || err == nil {
		err = io.ErrClosedPipe
	}
	return err
}

func (st *Stream) deliver(f Frame) error {
	switch f.Type {
	case FrameData, FrameStderr:
		p := st.out
		if f.Type == FrameStderr {
			p = st.errOut
		}
		if p.buffered()+len(f.Payload) > Window {
			return fmt.Errorf("%w: stream %d overran its window", ErrBadFrame, st.id)
		}
		p.write(f.Payload)
	case FrameEOF:
		if len(f.Payload) == 1 && f.Payload[0] == 1 {
			st.errOut.close(io.EOF)
		} else {
			st.out.close(io.EOF)
		}
	case FrameWindow:
		if len(f.Payload) != 4 {
			return fmt.Errorf("%w: window", ErrBadFrame)
		}
		st.mu.Lock()
		st.credit += int(binary.BigEndian.Uint32(f.Payload))
		st.cond.Broadcast()
		st.mu.Unlock()
	case FrameResize:
		if len(f.Payload) == 4 {
			select {
			case st.resizes <- Winsize{binary.BigEndian.Uint16(f.Payload), binary.BigEndian.Uint16(f.Payload[2:])}:
			default:
			}
		}
	case FrameSignal:
		if len(f.Payload) == 1 {
			select {
			case st.signals <- int(f.Payload[0]):
			default:
			}
		}
	case FrameExit:
		var e Exit
		if json.Unmarshal(f.Payload, &e) != nil {
			return fmt.Errorf("%w: exit", ErrBadFrame)
		}
		select {
		case st.exit <- e:
			close(st.exited)
		default:
		}
	case FrameStarted:
		var m struct {
			PID int `json:"pid"`
		}
		if json.Unmarshal(f.Payload, &m) != nil {
			return fmt.Errorf("%w: started", ErrBadFrame)
		}
		select {
		case st.started <- m.PID:
		default:
		}
	case FrameError:
		ae := &AgentError{}
		json.Unmarshal(f.Payload, ae)
		st.abort(ae)
		st.s.remove(st.id)
	case FrameClose:
		st.abort(io.EOF)
		st.s.remove(st.id)
	}
	return nil
}

// abort ends the stream locally: readers see err after what is buffered.
func (st *Stream) abort(err error) {
	st.out.close(err)
	st.errOut.close(err)
	st.mu.Lock()
	if !st.closed {
		st.closed, st.closeErr = true, err
		close(st.done)
	}
	st.cond.Broadcast()
	stop := st.stopCtx
	st.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// Done is closed once the stream is over on this side: the peer closed
// or aborted it, or the session ended.
func (st *Stream) Done() <-chan struct{} { return st.done }

// Read reads the peer's data: output for the opener, input for the
// served side.
func (st *Stream) Read(p []byte) (int, error) {
	n, err := st.out.read(p)
	st.ack(n)
	return n, err
}

// Stderr reads the peer's standard error (opener side).
func (st *Stream) Stderr() io.Reader { return readerFunc(st.readStderr) }

func (st *Stream) readStderr(p []byte) (int, error) {
	n, err := st.errOut.read(p)
	st.ack(n)
	return n, err
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// ack returns consumed bytes to the peer's window, in batches.
func (st *Stream) ack(n int) {
	if n == 0 {
		return
	}
	st.mu.Lock()
	st.unacked += n
	give := 0
	if st.unacked >= Window/4 {
		give, st.unacked = st.unacked, 0
	}
	st.mu.Unlock()
	if give > 0 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(give))
		st.send(FrameWindow, b[:])
	}
}

// Write sends data: input for the opener, output for the served side.
func (st *Stream) Write(p []byte) (int, error) { return st.write(FrameData, p) }

// StderrWriter writes standard error (served side).
func (st *Stream) StderrWriter() io.Writer {
	return writerFunc(func(p []byte) (int, error) { return st.write(FrameStderr, p) })
}

func (st *Stream) write(t byte, p []byte) (int, error) {
	sent := 0
	for sent < len(p) {
		st.mu.Lock()
		for st.credit == 0 && !st.closed {
			st.cond.Wait()
		}
		if st.closed {
			st.mu.Unlock()
			return sent, st.endErr()
		}
		n := min(len(p)-sent, st.credit, maxChunk)
		st.credit -= n
		st.mu.Unlock()
		if err := st.send(t, p[sent:sent+n]); err != nil {
			return sent, err
		}
		sent += n
	}
	return sent, nil
}

// CloseWrite ends this side's data (stdin for the opener, stdout for
// the served side); CloseStderr ends standard error.
func (st *Stream) CloseWrite() error  { return st.send(FrameEOF, []byte{0}) }
func (st *Stream) CloseStderr() error { return st.send(FrameEOF, []byte{1}) }

// Resize tells the guest the terminal's new size.
func (st *Stream) Resize(w Winsize) error {
	var b [4]byte
	binary.BigEndian.PutUint16(b[:2], w.Rows)
	binary.BigEndian.PutUint16(b[2:], w.Cols)
	return st.send(FrameResize, b[:])
}

// Signal forwards a signal to the guest's process.
func (st *Stream) Signal(sig int) error { return st.send(FrameSignal, []byte{byte(sig)}) }

// Resizes and Signals deliver what the opener sent (served side).
func (st *Stream) Resizes() <-chan Winsize { return st.resizes }
func (st *Stream) Signals() <-chan int     { return st.signals }

// SendExit reports how the work ended and closes the stream (served side).
func (st *Stream) SendExit(e Exit) error {
	b, _ := json.Marshal(e)
	err := st.send(FrameExit, b)
	st.Close()
	return err
}

// SendStarted tells the opener the pid of the process the stream
// serves (served side). Send it only to a host that asked (see
// FrameStarted).
func (st *Stream) SendStarted(pid int) error {
	b, _ := json.Marshal(map[string]int{"pid": pid})
	return st.send(FrameStarted, b)
}

// Started waits for the served side's STARTED frame and returns its
// pid. It returns 0 and no error when the stream's EXIT came first (a
// detached exec whose command does not exist: its status is in Wait),
// and the stream's error when it ended without either.
func (st *Stream) Started(ctx context.Context) (int, error) {
	select {
	case pid := <-st.started:
		return pid, nil
	case <-st.exited:
		select {
		case pid := <-st.started:
			return pid, nil
		default:
			return 0, nil
		}
	case <-st.done:
		// Both may be there (a process that exited at once, read late):
		// the pid first, or a select would pick either.
		select {
		case pid := <-st.started:
			return pid, nil
		default:
		}
		select {
		case <-st.exited:
			return 0, nil
		default:
		}
		return 0, st.waitErr()
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Fail reports that the request could not be carried out: err's
// *AgentError code, when it has one, goes along with its text.
func (st *Stream) Fail(err error) {
	ae := &AgentError{Message: err.Error()}
	if errors.As(err, &ae) {
		ae = &AgentError{Code: ae.Code, Message: err.Error()}
	}
	b, _ := json.Marshal(ae)
	st.send(FrameError, b)
	st.abort(err)
	st.s.remove(st.id)
}

// Wait returns the Exit the served side sent, or why none came.
func (st *Stream) Wait(ctx context.Context) (Exit, error) {
	select {
	case e := <-st.exit:
		return e, nil
	case <-st.done:
		select {
		case e := <-st.exit:
			return e, nil
		default:
		}
		return Exit{}, st.waitErr()
	case <-ctx.Done():
		st.abort(ctx.Err())
		return Exit{}, ctx.Err()
	}
}

// waitErr is why the stream ended without an exit status.
func (st *Stream) waitErr() error {
	st.mu.Lock()
	err := st.closeErr
	st.mu.Unlock()
	if err == io.EOF || err == nil {
		err = errors.New("the stream ended without an exit status")
	}
	return err
}

// Close ends the stream on both sides.
func (st *Stream) Close() error {
	st.closeWith(io.EOF)
	return nil
}

// closeWith ends the stream here with err, and tells the peer unless it
// ended already. Local readers and writers are released first: the
// close may wait for the channel.
func (st *Stream) closeWith(err error) {
	st.mu.Lock()
	already := st.closed
	st.mu.Unlock()
	st.abort(err)
	// Forgotten before the peer hears of it, so the peer's next open,
	// made once it has, finds the stream's slot free (MaxStreams).
	st.s.remove(st.id)
	if !already {
		st.s.send(nil, FrameClose, st.id, nil)
	}
}

// pipe is a buffer one goroutine fills and another drains.
type pipe struct {
	mu   sync.Mutex
	cond *sync.Cond
	buf  []byte
	err  error
}

func newPipe() *pipe {
	p := &pipe{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *pipe) buffered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.buf)
}

func (p *pipe) write(b []byte) {
	p.mu.Lock()
	if p.err == nil {
		p.buf = append(p.buf, b...)
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *pipe) close(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *pipe) read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.buf) == 0 && p.err == nil {
		p.cond.Wait()
	}
	if len(p.buf) == 0 {
		return 0, p.err
	}
	n := copy(b, p.buf)
	p.buf = p.buf[n:]
	if len(p.buf) == 0 {
		p.buf = nil
	}
	return n, nil
}

// Copy copies with a buffer as large as a frame's data chunk, so a
// stream's frames are as few as its reads allow.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	return io.CopyBuffer(dst, src, make([]byte, maxChunk))
}
