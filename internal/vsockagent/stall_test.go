package vsockagent

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// socketPair is a connected pair of Unix stream sockets as net.Conns
// (pollable, with deadlines, as the daemon's agent connections are),
// with small kernel buffers so a side that stops reading is felt soon.
func socketPair(t testing.TB) (a, b net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 8<<10)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<10)
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		t.Cleanup(func() { c.Close() })
	}
	return conns[0], conns[1]
}

// floodingAgent answers a host's greeting like an agent, then writes
// ping frames as fast as the host takes them and never reads again. It
// counts what it wrote in sent and returns when a write fails.
func floodingAgent(conn net.Conn, sent *atomic.Int64) {
	r := bufio.NewReader(conn)
	nonce, err := huntSync(r, nil)
	if err != nil {
		return
	}
	if _, err := ReadFrame(r); err != nil {
		return
	}
	if _, err := conn.Write(append(syncBytes(nonce), helloFrame(Hello{Proto: ProtocolVersion, Agent: "flood"})...)); err != nil {
		return
	}
	var pings []byte
	for range 512 {
		pings = AppendFrame(pings, Frame{Type: FrameHello, Payload: []byte(`{"proto":1}`)})
	}
	for {
		n, err := conn.Write(pings)
		sent.Add(int64(n))
		if err != nil {
			return
		}
	}
}

// A guest that pings without end and never reads must not wedge the
// host: opens and pings give up with their context while the channel is
// stuck, the read loop keeps draining the guest, and the session ends
// with ErrStalled once writes have made no progress for the stall bound,
// leaving no goroutine behind.
func TestFloodingAgentCannotWedgeTheHost(t *testing.T) {
	before := sessionGoroutines()
	host, guest := socketPair(t)
	var sent atomic.Int64
	flooded := make(chan struct{})
	go func() { defer close(flooded); floodingAgent(guest, &sent) }()
	const stall = 2 * time.Second
	ch := NewChannel(host)
	ch.SetStallTimeout(stall)
	s, err := Client(ch, Hello{}, host)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	// The pongs fill the guest's buffers within moments.
	time.Sleep(300 * time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	opened := time.Now()
	if st, err := s.Open(ctx, Request{Op: "sync"}); err == nil {
		st.Close()
		t.Error("opened a stream on a channel the peer does not read")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("open on a stuck channel: %v, want the context's deadline", err)
	}
	if d := time.Since(opened); d > 2*time.Second {
		t.Errorf("open took %s with a 500ms context", d)
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer pcancel()
	if _, err := s.Ping(pctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ping on a stuck channel: %v, want the context's deadline", err)
	}

	// The read loop never waits on a write: the guest's pings keep
	// being read although no pong gets through.
	n0 := sent.Load()
	time.Sleep(200 * time.Millisecond)
	select {
	case <-s.Done():
	default:
		if sent.Load() == n0 {
			t.Error("the host stopped reading the guest while its own writes were stuck")
		}
	}

	select {
	case <-s.Done():
	case <-time.After(2*stall + 3*time.Second):
		t.Fatalf("the session outlived a peer that stopped reading %s ago", time.Since(began))
	}
	if !errors.Is(s.Err(), ErrStalled) {
		t.Errorf("session ended with %v, want ErrStalled", s.Err())
	}
	if d := time.Since(began); d > 2*stall+2*time.Second {
		t.Errorf("the stuck session was dropped after %s, bound %s", d, 2*stall)
	}
	if _, err := s.Open(context.Background(), Request{Op: "sync"}); !errors.Is(err, ErrStalled) {
		t.Errorf("open after the stall: %v, want ErrStalled", err)
	}
	select {
	case <-flooded:
	case <-time.After(5 * time.Second):
		t.Fatal("the dropped session's connection is still open")
	}
	waitGoroutines(t, before)
}

// A peer that reads slowly but steadily is not a stalled one: each bit
// of progress re-arms the bound, however long one write takes.
func TestSlowReaderIsNotStalled(t *testing.T) {
	host, guest := socketPair(t)
	got := make(chan int, 1)
	go func() {
		r := bufio.NewReader(guest)
		nonce, err := huntSync(r, nil)
		if err != nil {
			return
		}
		ReadFrame(r)
		guest.Write(append(syncBytes(nonce), helloFrame(Hello{Proto: ProtocolVersion})...))
		n := 0
		buf := make([]byte, 16<<10)
		for {
			time.Sleep(200 * time.Millisecond)
			k, err := r.Read(buf)
			n += k
			if err != nil || n >= 256<<10 {
				got <- n
				return
			}
		}
	}()
	ch := NewChannel(host)
	ch.SetStallTimeout(time.Second)
	s, err := Client(ch, Hello{}, host)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Open(context.Background(), Request{Op: "put"})
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if _, err := st.Write(make([]byte, 200<<10)); err != nil {
		t.Fatalf("writing to a slow reader: %v", err)
	}
	if took := time.Since(began); took < 2*time.Second {
		t.Logf("the writes took %s only: the kernel buffered more than expected", took)
	}
	select {
	case <-s.Done():
		t.Fatalf("a slow reader's session was dropped: %v", s.Err())
	default:
	}
}

// A host that freezes its guest (a pause) lifts the bound: the stuck
// write waits as long as it must, and the bound applies again once set.
func TestStallBoundCanBeLifted(t *testing.T) {
	host, guest := socketPair(t)
	var sent atomic.Int64
	go floodingAgent(guest, &sent)
	ch := NewChannel(host)
	ch.SetStallTimeout(time.Second)
	s, err := Client(ch, Hello{}, host)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetStallTimeout(0)
	select {
	case <-s.Done():
		t.Fatalf("the session ended with the bound lifted: %v", s.Err())
	case <-time.After(3 * time.Second):
	}
	s.SetStallTimeout(time.Second)
	select {
	case <-s.Done():
		if !errors.Is(s.Err(), ErrStalled) {
			t.Errorf("session ended with %v, want ErrStalled", s.Err())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the bound did not apply again")
	}
}

// sessionGoroutines counts the goroutines running sessions: their read
// loops and reply writers. (Other tests' commands and handlers may start
// goroutines at any time, so the total count proves nothing.)
func sessionGoroutines() int {
	buf := make([]byte, 4<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "(*Session).readLoop") || strings.Contains(g, "(*Session).writeReplies") {
			n++
		}
	}
	return n
}

// waitGoroutines fails unless the sessions' goroutines fall back to n.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for sessionGoroutines() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 4<<20)
			t.Fatalf("%d session goroutines, %d before:\n%s", sessionGoroutines(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The side that serves refuses an open past MaxStreams with
// ErrTooManyStreams' text, and the streams it serves go on working.
func TestStreamCap(t *testing.T) {
	hostConn, guestConn := socketPair(t)
	release := make(chan struct{})
	handler := func(st *Stream) {
		<-release
		n, _ := io.Copy(io.Discard, st)
		st.SendExit(Exit{Code: int(n)})
	}
	srv := make(chan *Session, 1)
	go func() {
		s, err := Server(NewChannel(guestConn), Hello{}, handler, guestConn)
		if err != nil {
			t.Error(err)
		}
		srv <- s
	}()
	c, err := Client(NewChannel(hostConn), Hello{}, hostConn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer (<-srv).Close()
	ctx := context.Background()
	streams := make([]*Stream, MaxStreams)
	for i := range streams {
		if streams[i], err = c.Open(ctx, Request{Op: "exec"}); err != nil {
			t.Fatalf("open %d: %v", i+1, err)
		}
	}
	over, err := c.Open(ctx, Request{Op: "exec"})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := over.Wait(wctx); err == nil || err.Error() != ErrTooManyStreams.Error() {
		t.Errorf("open %d: %v, want %q", MaxStreams+1, err, ErrTooManyStreams)
	}
	close(release)
	first := streams[0]
	first.Write([]byte("still served"))
	first.CloseWrite()
	if e, err := first.Wait(wctx); err != nil || e.Code != len("still served") {
		t.Errorf("the first stream after a refusal: %+v, %v", e, err)
	}
	<-first.Done() // the server closed it: its slot is free
	// A slot is free again.
	again, err := c.Open(ctx, Request{Op: "exec"})
	if err != nil {
		t.Fatal(err)
	}
	again.CloseWrite()
	if _, err := again.Wait(wctx); err != nil {
		t.Errorf("an open once a stream ended: %v", err)
	}
	for _, st := range streams[1:] {
		st.Close()
	}
}

// FuzzSession feeds arbitrary bytes to a session after a valid
// greeting, as the side that serves (the agent) or the side that opens
// (the host): whatever they are, the session must not panic, and must
// end once its peer hangs up.
func FuzzSession(f *testing.F) {
	open := AppendFrame(nil, Frame{Type: FrameOpen, Stream: 1, Payload: []byte(`{"op":"exec"}`)})
	f.Add(false, append(open, AppendFrame(nil, Frame{Type: FrameData, Stream: 1, Payload: []byte("x")})...))
	f.Add(false, AppendFrame(nil, Frame{Type: FrameHello, Payload: []byte(`{"proto":1}`)}))
	f.Add(true, AppendFrame(nil, Frame{Type: FrameWindow, Stream: 1, Payload: []byte{0, 1, 0, 0}}))
	f.Add(true, append(open, AppendFrame(nil, Frame{Type: FrameExit, Stream: 1, Payload: []byte(`{"code":1}`)})...))
	f.Add(false, AppendFrame(nil, Frame{Type: FrameData, Stream: 7, Payload: make([]byte, Window+1)}))
	f.Fuzz(func(t *testing.T, asHost bool, input []byte) {
		mine, peer := socketPair(t)
		// The peer greets, sends input, hangs up, and reads everything
		// meanwhile, so no write of the session stalls.
		go func() {
			r := bufio.NewReader(peer)
			nonce := make([]byte, NonceLen)
			if asHost {
				// An agent answers with the host's nonce.
				var err error
				if nonce, err = huntSync(r, nil); err != nil {
					return
				}
				if _, err := ReadFrame(r); err != nil {
					return
				}
			}
			go io.Copy(io.Discard, r)
			peer.Write(append(append(syncBytes(nonce), helloFrame(Hello{Proto: ProtocolVersion})...), input...))
			peer.(*net.UnixConn).CloseWrite()
		}()
		var s *Session
		var err error
		if asHost {
			s, err = Client(NewChannel(mine), Hello{}, mine)
		} else {
			s, err = Server(NewChannel(mine), Hello{}, func(st *Stream) {
				io.Copy(io.Discard, st)
				st.SendExit(Exit{})
			}, mine)
		}
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-s.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the session outlived its peer")
		}
	})
}
