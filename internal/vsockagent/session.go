package vsockagent

import (
	"bufio"
	"context"
	"crypto/rand"
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
