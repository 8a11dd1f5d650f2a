package vsockagent

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
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
	// Features lists what the agent serves beyond protocol 1's first
	// ops (Feature*), so a host can tell an older agent apart before it
	// sends a request that agent would misread (an old agent ignores
	// "detach" and would kill the process at the stream's end).
	Features []string `json:"features,omitempty"`
}

// Features an agent announces in its Hello.
const (
	// FeatureProcs: detached exec, STARTED, attach, procs, signal,
	// stdin, resize; ERROR codes.
	FeatureProcs = "procs"
	// FeatureFS: stat, ls, mkdir, mv, rm, write, read, watch, metrics,
	// ensure_user.
	FeatureFS = "fs"
)

// agentFeatures is what this agent announces.
var agentFeatures = []string{FeatureProcs, FeatureFS}

// Supports reports whether the peer announced feature.
func (s *Session) Supports(feature string) bool { return slices.Contains(s.peer.Features, feature) }

// Request opens a stream: what the guest should do.
type Request struct {
	// Op: exec, put (a tar stream into Path), get (a tar stream of
	// Path), dial (a TCP connection to Addr), ports, sync, poweroff,
	// filesync (a synced mount of Path, see package filesync); attach,
	// procs, signal, stdin, resize (detached processes); stat, ls,
	// mkdir, mv, rm, write, read, watch, metrics, ensure_user.
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

	// Detach (exec) makes the process the agent's: the stream's end
	// only detaches from it (see docs/agent-protocol.md).
	Detach bool `json:"detach,omitempty"`
	// Stdin (exec): false gives the process /dev/null; nil is true.
	Stdin *bool `json:"stdin,omitempty"`
	// Tag (exec) labels a detached process in procs.
	Tag string `json:"tag,omitempty"`
	// ReportPID (exec) asks for a STARTED frame before any output.
	ReportPID bool `json:"report_pid,omitempty"`
	// PID names a detached process (attach, signal, stdin, resize).
	PID int `json:"pid,omitempty"`
	// Sig is the signal number for op signal.
	Sig int `json:"signal,omitempty"`
	// Close (stdin) closes the process's stdin at the host's EOF.
	Close bool `json:"close,omitempty"`
	// To is mv's destination.
	To string `json:"to,omitempty"`
	// Depth is how deep ls lists (default 1: the directory's entries).
	Depth int `json:"depth,omitempty"`
	// Recursive makes watch cover the whole tree.
	Recursive bool `json:"recursive,omitempty"`
	// Home is ensure_user's home directory (default /home/USER).
	Home string `json:"home,omitempty"`
	// VM names the VM on the CLI-to-daemon leg; the daemon drops it.
	VM string `json:"vm,omitempty"`
}

// WantsStarted reports whether the agent answers req with a STARTED
// frame (FrameStarted): a detached exec, an exec with ReportPID, an
// attach. A relay forwards it before any output.
func (r Request) WantsStarted() bool {
	return (r.Op == "exec" && (r.Detach || r.ReportPID)) || r.Op == "attach"
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

// MaxStreams is how many streams one session serves at once. Beyond
// it an open is refused with ErrTooManyStreams' text: each stream costs
// goroutines and up to two windows of buffers, and one connection (a
// CLI's to the daemon, the daemon's to a guest) must not take what all
// of them share. No legitimate client comes near: `vm cp` and exec use
// one stream, a forwarded port one per connection.
const MaxStreams = 1024

// ErrTooManyStreams is why an open past MaxStreams is refused; the
// opener reads its text in the stream's error.
var ErrTooManyStreams = errors.New("too many streams on one connection")

// maxRefusals is how many refusals of opens may wait to be written; a
// peer that makes more without reading them is dropped.
const maxRefusals = 64

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

	// The read loop never writes: what it must answer (a ping, a refused
	// open) it hands to writeReplies, or a peer that sends and never
	// reads would block it, and with it every stream of the session.
	// One pong waits at most (it answers every ping meanwhile);
	// refusals wait in a bounded queue.
	pingWaiting chan struct{}
	refusals    chan []byte
}

// Client starts a session as the side that opens streams (the host):
// it sends the sync marker and its Hello, then skips everything until
// the peer's marker with the same nonce, and reads the peer's Hello.
func Client(ch *Channel, hello Hello, closer io.Closer) (*Session, error) {
	nonce := make([]byte, NonceLen)
	rand.Read(nonce)
	s := newSession(ch, nil, closer)
	hello.Proto = ProtocolVersion
	if err := s.writeRaw(nil, append(syncBytes(nonce), helloFrame(hello)...)); err != nil {
		return nil, fmt.Errorf("greeting the agent: %w", err)
	}
	if _, err := huntSync(ch.r, nonce); err != nil {
		return nil, fmt.Errorf("waiting for the agent's greeting: %w", err)
	}
	if err := s.readHello(); err != nil {
		return nil, err
	}
	s.start()
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
	if err := s.writeRaw(nil, append(syncBytes(nonce), helloFrame(hello)...)); err != nil {
		return nil, err
	}
	s.start()
	return s, nil
}

func newSession(ch *Channel, handler func(*Stream), closer io.Closer) *Session {
	return &Session{ch: ch, handler: handler, closer: closer, streams: map[uint32]*Stream{}, pongs: make(chan Hello, 1), done: make(chan struct{}),
		pingWaiting: make(chan struct{}, 1), refusals: make(chan []byte, maxRefusals)}
}

// start runs the session's two goroutines; both end with the session.
func (s *Session) start() {
	go s.readLoop()
	go s.writeReplies()
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

// SetStallTimeout sets the session's channel's stall bound (see
// Channel.SetStallTimeout): a host lifts it while it keeps the guest
// paused, and puts it back when the guest runs again.
func (s *Session) SetStallTimeout(d time.Duration) { s.ch.SetStallTimeout(d) }

func (s *Session) fail(err error) {
	s.mu.Lock()
	select {
	case <-s.done:
		s.mu.Unlock()
		return
	default:
	}
	s.err = err
	s.ch.dmu.Lock()
	close(s.done)
	s.ch.kick()
	s.ch.dmu.Unlock()
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

// Ping asks the peer for its Hello again: a liveness check. It gives up
// when ctx ends, also while it waits to write.
func (s *Session) Ping(ctx context.Context) (Hello, error) {
	b, _ := json.Marshal(Hello{Proto: ProtocolVersion})
	if err := s.send(ctx.Done(), FrameHello, 0, b); err != nil {
		if errors.Is(err, errAbandoned) {
			err = fmt.Errorf("pinging the agent: its channel stayed busy: %w", context.Cause(ctx))
		}
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

// Open starts a stream for req. ctx bounds the open, which may wait
// while another write holds the channel, and then the stream: once ctx
// ends the stream is closed on both sides (as exec.CommandContext ends
// its process), so pass a context that lasts as long as the stream's
// work should.
func (s *Session) Open(ctx context.Context, req Request) (*Stream, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("opening a %s stream: %w", req.Op, context.Cause(ctx))
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
	if err := s.send(ctx.Done(), FrameOpen, st.id, b); err != nil {
		if errors.Is(err, errAbandoned) {
			err = fmt.Errorf("opening a %s stream: the agent channel stayed busy: %w", req.Op, context.Cause(ctx))
		}
		st.abort(err)
		s.remove(st.id)
		return nil, err
	}
	// Only once the open is written, so the close this may send follows it.
	st.closeWhenDone(ctx)
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
		select {
		case s.pingWaiting <- struct{}{}:
		default: // a pong is on its way already: it answers this ping too
		}
		return nil
	}
	if f.Type == FrameOpen {
		var req Request
		if s.handler == nil {
			return s.refuse(f.Stream, "this side opens no streams")
		}
		if json.Unmarshal(f.Payload, &req) != nil {
			return s.refuse(f.Stream, "malformed request")
		}
		s.mu.Lock()
		if len(s.streams) >= MaxStreams {
			s.mu.Unlock()
			return s.refuse(f.Stream, ErrTooManyStreams.Error())
		}
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

// refuse queues a refusal of the open of stream id for writeReplies.
func (s *Session) refuse(id uint32, msg string) error {
	b, _ := json.Marshal(AgentError{Message: msg})
	select {
	case s.refusals <- AppendFrame(nil, Frame{Type: FrameError, Stream: id, Payload: b}):
		return nil
	default:
		return fmt.Errorf("%w: %d refused opens are unanswered, the peer opens streams and does not read", ErrTooManyStreams, maxRefusals)
	}
}

// writeReplies writes what the read loop must answer, off the read
// loop, until the session ends.
func (s *Session) writeReplies() {
	for {
		select {
		case <-s.done:
			return
		case <-s.pingWaiting:
			b, _ := json.Marshal(s.peerHelloForPong())
			s.send(nil, FrameHello, 0, b)
		case b := <-s.refusals:
			s.writeRaw(nil, b)
		}
	}
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
