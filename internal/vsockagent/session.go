package vsockagent

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Window is how many unacknowledged bytes of output (or input) a stream
// may have in flight: a slow reader holds back its writer, not the
// channel, and every other stream keeps flowing.
const Window = 256 << 10

// Hello is exchanged when a session starts, and as ping and pong after.
type Hello struct {
	Proto    int    `json:"proto"`
	Agent    string `json:"agent,omitempty"` // the agent's version
	Hostname string `json:"hostname,omitempty"`
	Image    string `json:"image,omitempty"`
	UptimeMs int64  `json:"uptime_ms,omitempty"`
	Pong     bool   `json:"pong,omitempty"`
}

// Request opens a stream: what the guest should do.
type Request struct {
	// Op: exec, put (a tar stream into Path), get (a tar stream of
	// Path), dial (a TCP connection to Addr), ports, sync, poweroff,
	// filesync (a synced mount of Path, see package filesync).
	Op        string   `json:"op"`
	Argv      []string `json:"argv,omitempty"`
	Env       []string `json:"env,omitempty"`
	Dir       string   `json:"dir,omitempty"`
	User      string   `json:"user,omitempty"`
	TTY       bool     `json:"tty,omitempty"`
	Rows      uint16   `json:"rows,omitempty"`
	Cols      uint16   `json:"cols,omitempty"`
	TimeoutMs int64    `json:"timeout_ms,omitempty"`
	Path      string   `json:"path,omitempty"`
	Addr      string   `json:"addr,omitempty"`
	// VM names the VM on the CLI-to-daemon leg; the daemon drops it.
	VM string `json:"vm,omitempty"`
}

// Exit is how a stream's work ended.
type Exit struct {
	Code     int    `json:"code"`
	Signal   string `json:"signal,omitempty"` // e.g. "killed"
	TimedOut bool   `json:"timed_out,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Winsize is a terminal size.
type Winsize struct{ Rows, Cols uint16 }

// Channel is one byte stream that carries sessions: a vsock connection
// carries one; a virtio-serial port carries one after another, as hosts
// come and go, which is why its reader and write lock outlive them.
type Channel struct {
	rw  io.ReadWriter
	r   *bufio.Reader
	wmu sync.Mutex
}

// NewChannel wraps a byte stream.
func NewChannel(rw io.ReadWriter) *Channel {
	return &Channel{rw: rw, r: bufio.NewReaderSize(rw, 256<<10)}
}

// Copy copies with a buffer as large as a frame's data chunk, so a
// stream's frames are as few as its reads allow.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	return io.CopyBuffer(dst, src, make([]byte, maxChunk))
}

// NewChannelReader makes a channel whose reads continue from r (which
// may already hold bytes, as after an HTTP upgrade) and whose writes go
// to w.
func NewChannelReader(r *bufio.Reader, w io.Writer) *Channel {
	return &Channel{rw: struct {
		io.Reader
		io.Writer
	}{r, w}, r: r}
}

// Session multiplexes streams over a channel.
type Session struct {
	ch      *Channel
	handler func(*Stream) // nil on the side that only opens streams
	peer    Hello

	mu      sync.Mutex
	streams map[uint32]*Stream
	next    uint32
	pongs   chan Hello
	done    chan struct{}
	err     error
	closer  io.Closer
}

// Client starts a session as the side that opens streams (the host):
// it sends the sync marker and its Hello, then skips everything until
// the peer's marker with the same nonce, and reads the peer's Hello.
func Client(ch *Channel, hello Hello, closer io.Closer) (*Session, error) {
	nonce := make([]byte, NonceLen)
	rand.Read(nonce)
	s := newSession(ch, nil, closer)
	hello.Proto = ProtocolVersion
	if err := s.writeRaw(append(syncBytes(nonce), helloFrame(hello)...)); err != nil {
		return nil, fmt.Errorf("greeting the agent: %w", err)
	}
	if _, err := huntSync(ch.r, nonce); err != nil {
		return nil, fmt.Errorf("waiting for the agent's greeting: %w", err)
	}
	if err := s.readHello(); err != nil {
		return nil, err
	}
	go s.readLoop()
	return s, nil
}

// Server waits for a client's greeting on ch, answers it with hello and
// serves the client's streams with handler until the session ends.
func Server(ch *Channel, hello Hello, handler func(*Stream), closer io.Closer) (*Session, error) {
	nonce, err := huntSync(ch.r, nil)
	if err != nil {
		return nil, err
	}
	s := newSession(ch, handler, closer)
	if err := s.readHello(); err != nil {
		return nil, err
	}
	hello.Proto = ProtocolVersion
	if err := s.writeRaw(append(syncBytes(nonce), helloFrame(hello)...)); err != nil {
		return nil, err
	}
	go s.readLoop()
	return s, nil
}

func newSession(ch *Channel, handler func(*Stream), closer io.Closer) *Session {
	return &Session{ch: ch, handler: handler, closer: closer, streams: map[uint32]*Stream{}, pongs: make(chan Hello, 1), done: make(chan struct{})}
}

func helloFrame(h Hello) []byte {
	b, _ := json.Marshal(h)
	return AppendFrame(nil, Frame{Type: FrameHello, Payload: b})
}

func (s *Session) readHello() error {
	f, err := ReadFrame(s.ch.r)
	if err != nil {
		return fmt.Errorf("reading the greeting: %w", err)
	}
	if f.Type != FrameHello || json.Unmarshal(f.Payload, &s.peer) != nil {
		return fmt.Errorf("%w: the greeting is not a hello", ErrBadFrame)
	}
	if s.peer.Proto != ProtocolVersion {
		return fmt.Errorf("agent protocol %d, this banger speaks %d: upgrade banger or recreate the VM's image", s.peer.Proto, ProtocolVersion)
	}
	return nil
}

// Peer is the other side's greeting.
func (s *Session) Peer() Hello { return s.peer }

// Done is closed when the session ends; Err then says why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is why the session ended.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends the session and every stream on it.
func (s *Session) Close() error {
	s.fail(errors.New("agent session closed"))
	return nil
}

// writeRaw writes bytes under the channel's lock, refusing once the
// session is over: a writer of an ended session never interleaves with
// the next session's frames.
func (s *Session) writeRaw(b []byte) error {
	s.ch.wmu.Lock()
	defer s.ch.wmu.Unlock()
	select {
	case <-s.done:
		return s.Err()
	default:
	}
	_, err := s.ch.rw.Write(b)
	if err != nil {
		go s.fail(fmt.Errorf("writing to the agent channel: %w", err))
	}
	return err
}

func (s *Session) send(t byte, id uint32, payload []byte) error {
	return s.writeRaw(AppendFrame(nil, Frame{Type: t, Stream: id, Payload: payload}))
}

func (s *Session) fail(err error) {
	s.mu.Lock()
	select {
	case <-s.done:
		s.mu.Unlock()
		return
	default:
	}
	s.err = err
	close(s.done)
	streams := s.streams
	s.streams = map[uint32]*Stream{}
	s.mu.Unlock()
	for _, st := range streams {
		st.abort(err)
	}
	if s.closer != nil {
		s.closer.Close()
	}
}

// Ping asks the peer for its Hello again: a liveness check.
func (s *Session) Ping(ctx context.Context) (Hello, error) {
	b, _ := json.Marshal(Hello{Proto: ProtocolVersion})
	if err := s.send(FrameHello, 0, b); err != nil {
		return Hello{}, err
	}
	select {
	case h := <-s.pongs:
		return h, nil
	case <-s.done:
		return Hello{}, s.Err()
	case <-ctx.Done():
		return Hello{}, ctx.Err()
	}
}

// Open starts a stream for req.
func (s *Session) Open(req Request) (*Stream, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	select {
	case <-s.done:
		s.mu.Unlock()
		return nil, s.Err()
	default:
	}
	s.next++
	st := newStream(s, s.next, req)
	s.streams[st.id] = st
	s.mu.Unlock()
	if err := s.send(FrameOpen, st.id, b); err != nil {
		s.remove(st.id)
		return nil, err
	}
	return st, nil
}

func (s *Session) remove(id uint32) {
	s.mu.Lock()
	delete(s.streams, id)
	s.mu.Unlock()
}

func (s *Session) stream(id uint32) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[id]
}

func (s *Session) readLoop() {
	for {
		f, err := ReadFrame(s.ch.r)
		if err != nil {
			s.fail(fmt.Errorf("agent channel: %w", err))
			return
		}
		if err := s.dispatch(f); err != nil {
			s.fail(err)
			return
		}
	}
}

func (s *Session) dispatch(f Frame) error {
	if f.Type == FrameHello {
		var h Hello
		if json.Unmarshal(f.Payload, &h) != nil {
			return fmt.Errorf("%w: bad hello", ErrBadFrame)
		}
		if h.Pong {
			select {
			case s.pongs <- h:
			default:
			}
			return nil
		}
		pong := s.peerHelloForPong()
		b, _ := json.Marshal(pong)
		return s.send(FrameHello, 0, b)
	}
	if f.Type == FrameOpen {
		var req Request
		if s.handler == nil || json.Unmarshal(f.Payload, &req) != nil {
			msg, _ := json.Marshal(map[string]string{"message": "this side opens no streams"})
			return s.send(FrameError, f.Stream, msg)
		}
		s.mu.Lock()
		st := newStream(s, f.Stream, req)
		s.streams[f.Stream] = st
		s.mu.Unlock()
		go s.handler(st)
		return nil
	}
	st := s.stream(f.Stream)
	if st == nil {
		return nil // a stream that already ended: its last frames are moot
	}
	return st.deliver(f)
}

// pongHello is what this side answers a ping with.
var pongHello = struct {
	sync.Mutex
	h Hello
}{}

// SetPong sets what the agent answers pings with (its version, host
// name; uptime is filled in per ping).
func SetPong(h Hello) {
	pongHello.Lock()
	pongHello.h = h
	pongHello.Unlock()
}

var started = time.Now()

func (s *Session) peerHelloForPong() Hello {
	pongHello.Lock()
	h := pongHello.h
	pongHello.Unlock()
	h.Proto, h.Pong, h.UptimeMs = ProtocolVersion, true, time.Since(started).Milliseconds()
	return h
}

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
	resizes     chan Winsize
	signals     chan int
	done        chan struct{}
}

func newStream(s *Session, id uint32, req Request) *Stream {
	st := &Stream{s: s, id: id, Req: req, out: newPipe(), errOut: newPipe(), credit: Window,
		exit: make(chan Exit, 1), resizes: make(chan Winsize, 8), signals: make(chan int, 8), done: make(chan struct{})}
	st.cond = sync.NewCond(&st.mu)
	return st
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
		default:
		}
	case FrameError:
		var m struct{ Message string }
		json.Unmarshal(f.Payload, &m)
		st.abort(errors.New(m.Message))
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
	st.mu.Unlock()
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
		st.s.send(FrameWindow, st.id, b[:])
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
			err := st.closeErr
			st.mu.Unlock()
			if err == io.EOF || err == nil {
				err = io.ErrClosedPipe
			}
			return sent, err
		}
		n := min(len(p)-sent, st.credit, maxChunk)
		st.credit -= n
		st.mu.Unlock()
		if err := st.s.send(t, st.id, p[sent:sent+n]); err != nil {
			return sent, err
		}
		sent += n
	}
	return sent, nil
}

// CloseWrite ends this side's data (stdin for the opener, stdout for
// the served side); CloseStderr ends standard error.
func (st *Stream) CloseWrite() error  { return st.s.send(FrameEOF, st.id, []byte{0}) }
func (st *Stream) CloseStderr() error { return st.s.send(FrameEOF, st.id, []byte{1}) }

// Resize tells the guest the terminal's new size.
func (st *Stream) Resize(w Winsize) error {
	var b [4]byte
	binary.BigEndian.PutUint16(b[:2], w.Rows)
	binary.BigEndian.PutUint16(b[2:], w.Cols)
	return st.s.send(FrameResize, st.id, b[:])
}

// Signal forwards a signal to the guest's process.
func (st *Stream) Signal(sig int) error { return st.s.send(FrameSignal, st.id, []byte{byte(sig)}) }

// Resizes and Signals deliver what the opener sent (served side).
func (st *Stream) Resizes() <-chan Winsize { return st.resizes }
func (st *Stream) Signals() <-chan int     { return st.signals }

// SendExit reports how the work ended and closes the stream (served side).
func (st *Stream) SendExit(e Exit) error {
	b, _ := json.Marshal(e)
	err := st.s.send(FrameExit, st.id, b)
	st.Close()
	return err
}

// Fail reports that the request could not be carried out at all.
func (st *Stream) Fail(err error) {
	b, _ := json.Marshal(map[string]string{"message": err.Error()})
	st.s.send(FrameError, st.id, b)
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
		st.mu.Lock()
		err := st.closeErr
		st.mu.Unlock()
		if err == io.EOF || err == nil {
			err = errors.New("the stream ended without an exit status")
		}
		return Exit{}, err
	case <-ctx.Done():
		st.abort(ctx.Err())
		return Exit{}, ctx.Err()
	}
}

// Close ends the stream on both sides.
func (st *Stream) Close() error {
	st.mu.Lock()
	already := st.closed
	st.mu.Unlock()
	if !already {
		st.s.send(FrameClose, st.id, nil)
	}
	st.abort(io.EOF)
	st.s.remove(st.id)
	return nil
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
