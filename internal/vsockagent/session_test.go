package vsockagent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pair runs a real agent (on this host, as the test's user) behind a
// session over a socket pair, and returns the host's side.
func pair(t testing.TB) *Session {
	t.Helper()
	return pairWith(t, NewAgent(Options{Version: "test", Env: []string{"IMAGE_VAR=from-image"}, PowerOff: func() {}}))
}

// pairWith is pair with a given agent: sessions come and go, the agent
// (and its detached processes) stays.
func pairWith(t testing.TB, a *Agent) *Session {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	host, guest := os.NewFile(uintptr(fds[0]), "host"), os.NewFile(uintptr(fds[1]), "guest")
	srv := make(chan *Session, 1)
	go func() {
		s, err := Server(NewChannel(guest), Hello{Agent: "test", Features: agentFeatures}, a.Handle, guest)
		if err != nil {
			t.Error(err)
		}
		srv <- s
	}()
	c, err := Client(NewChannel(host), Hello{}, host)
	if err != nil {
		t.Fatal(err)
	}
	s := <-srv
	t.Cleanup(func() { c.Close(); s.Close() })
	if c.Peer().Agent != "test" || c.Peer().Proto != ProtocolVersion {
		t.Fatalf("peer hello = %+v", c.Peer())
	}
	return c
}

type result struct {
	stdout, stderr string
	exit           Exit
	err            error
}

func run(s *Session, req Request, stdin io.Reader) result {
	st, err := s.Open(context.Background(), req)
	if err != nil {
		return result{err: err}
	}
	var out, errb bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); io.Copy(&out, st) }()
	go func() { defer wg.Done(); io.Copy(&errb, st.Stderr()) }()
	if stdin != nil {
		go func() { io.Copy(st, stdin); st.CloseWrite() }()
	} else {
		st.CloseWrite()
	}
	e, err := st.Wait(context.Background())
	wg.Wait()
	return result{out.String(), errb.String(), e, err}
}

func TestExecStreamsAndExitCodes(t *testing.T) {
	s := pair(t)
	r := run(s, Request{Op: "exec", Argv: []string{"sh", "-c", "echo out; echo err >&2; echo $IMAGE_VAR $MINE; exit 3"}, Env: []string{"MINE=mine"}}, nil)
	if r.err != nil || r.stdout != "out\nfrom-image mine\n" || r.stderr != "err\n" || r.exit.Code != 3 {
		t.Errorf("exec = %+v", r)
	}
	if r := run(s, Request{Op: "exec", Argv: []string{"true"}}, nil); r.exit.Code != 0 || r.err != nil {
		t.Errorf("true = %+v", r)
	}
	if r := run(s, Request{Op: "exec", Argv: []string{"sh", "-c", "kill -9 $$"}}, nil); r.exit.Code != 137 || r.exit.Signal != "SIGKILL" {
		t.Errorf("killed = %+v", r)
	}
	if r := run(s, Request{Op: "exec", Argv: []string{"no-such-command"}}, nil); !IsCode(r.err, CodeNotFound) || !strings.Contains(r.err.Error(), "not found") {
		t.Errorf("missing command = %+v", r)
	}
	if r := run(s, Request{Op: "exec", Argv: []string{"sleep", "10"}, TimeoutMs: 200}, nil); !r.exit.TimedOut || r.exit.Code != 137 {
		t.Errorf("timeout = %+v", r)
	}
	if r := run(s, Request{Op: "frobnicate"}, nil); r.err == nil || !strings.Contains(r.err.Error(), "does not know") {
		t.Errorf("unknown op = %+v", r)
	}
}

func TestExecStdinTenMiB(t *testing.T) {
	s := pair(t)
	data := make([]byte, 10<<20)
	rand.Read(data)
	r := run(s, Request{Op: "exec", Argv: []string{"sha256sum"}}, bytes.NewReader(data))
	sum := sha256.Sum256(data)
	if r.exit.Code != 0 || !strings.HasPrefix(r.stdout, hexString(sum[:])) {
		t.Errorf("sha256sum of 10 MiB through stdin = %q (%+v), want %x", r.stdout, r.exit, sum)
	}
	// And back out: cat returns every byte.
	r = run(s, Request{Op: "exec", Argv: []string{"cat"}}, bytes.NewReader(data))
	if r.exit.Code != 0 || r.stdout != string(data) {
		t.Errorf("cat of 10 MiB: %d bytes back", len(r.stdout))
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, len(b)*2)
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func TestSignalReachesTheCommand(t *testing.T) {
	s := pair(t)
	st, err := s.Open(context.Background(), Request{Op: "exec", Argv: []string{"sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	st.Signal(int(syscall.SIGINT))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := st.Wait(ctx)
	if err != nil || e.Code != 130 || e.Signal != "SIGINT" {
		t.Errorf("after SIGINT: %+v, %v", e, err)
	}
}

func TestPTYSizeAndResize(t *testing.T) {
	s := pair(t)
	st, err := s.Open(context.Background(), Request{Op: "exec", Argv: []string{"sh", "-c", "tty; stty size; read x; stty size"}, TTY: true, Rows: 40, Cols: 100})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&out, st); close(done) }()
	time.Sleep(300 * time.Millisecond)
	st.Resize(Winsize{Rows: 50, Cols: 120})
	time.Sleep(100 * time.Millisecond)
	st.Write([]byte("\n"))
	e, err := st.Wait(context.Background())
	<-done
	got := strings.ReplaceAll(out.String(), "\r", "")
	if err != nil || e.Code != 0 || !strings.Contains(got, "/dev/pts/") || !strings.Contains(got, "40 100\n") || !strings.Contains(got, "50 120\n") {
		t.Errorf("pty: %q, %+v, %v", got, e, err)
	}
}

// A stream whose output nobody reads holds back only itself.
func TestBackPressureIsPerStream(t *testing.T) {
	s := pair(t)
	stuck, err := s.Open(context.Background(), Request{Op: "exec", Argv: []string{"cat"}})
	if err != nil {
		t.Fatal(err)
	}
	// cat echoes; nobody reads. 4 MiB is far more than the windows and
	// pipes between here and cat can hold.
	const total = 4 << 20
	wrote := make(chan int, 1)
	go func() { n, _ := stuck.Write(make([]byte, total)); wrote <- n }()
	credit := func() int {
		stuck.mu.Lock()
		defer stuck.mu.Unlock()
		return stuck.credit
	}
	// The stall, seen where it happens: the stream's window is spent
	// (acks may refill it for a while: cat still drains its pipe).
	for deadline := time.Now().Add(10 * time.Second); credit() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the first stream never ran out of window (credit %d)", credit())
		}
	}
	done := make(chan result, 1)
	go func() { done <- run(s, Request{Op: "exec", Argv: []string{"echo", "through"}}, nil) }()
	select {
	case r := <-done:
		if r.stdout != "through\n" {
			t.Errorf("second stream = %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stalled stream blocked another")
	}
	// The first stream is still stalled after the second went through ...
	select {
	case n := <-wrote:
		t.Fatalf("the first stream never stalled: its write of %d bytes returned %d with nobody reading", total, n)
	default:
	}
	// ... and moves again once its output is read.
	go io.Copy(io.Discard, stuck)
	select {
	case n := <-wrote:
		if n != total {
			t.Errorf("the first stream wrote %d of %d bytes", n, total)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the first stream stayed stalled after its output was read")
	}
	stuck.Close()
}

func TestCopyTreeBothWays(t *testing.T) {
	s := pair(t)
	src := t.TempDir()
	tree := filepath.Join(src, "tree")
	os.MkdirAll(filepath.Join(tree, "sub", "deep"), 0o750)
	os.WriteFile(filepath.Join(tree, "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	os.WriteFile(filepath.Join(tree, "sub", "secret"), []byte("s3cret"), 0o600)
	os.WriteFile(filepath.Join(tree, "sub", "deep", "big"), bytes.Repeat([]byte("x"), 3<<20), 0o644)
	os.Symlink("run.sh", filepath.Join(tree, "link"))

	// In: a tar of tree into a new name in the "guest".
	guest := t.TempDir()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(WriteTar(pw, tree)) }()
	if r := run(s, Request{Op: "put", Path: filepath.Join(guest, "copied")}, pr); r.exit.Code != 0 || r.err != nil {
		t.Fatalf("put = %+v", r)
	}
	// Out: that copy back into an existing directory.
	back := t.TempDir()
	st, err := s.Open(context.Background(), Request{Op: "get", Path: filepath.Join(guest, "copied")})
	if err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	if err := ExtractTar(st, back, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	if e, err := st.Wait(context.Background()); err != nil || e.Code != 0 {
		t.Fatalf("get = %+v %v", e, err)
	}
	for _, c := range []struct {
		rel  string
		mode os.FileMode
	}{{"run.sh", 0o755}, {"sub", os.ModeDir | 0o750}, {"sub/secret", 0o600}, {"sub/deep/big", 0o644}} {
		for _, root := range []string{filepath.Join(guest, "copied"), filepath.Join(back, "copied")} {
			fi, err := os.Stat(filepath.Join(root, c.rel))
			if err != nil || fi.Mode() != c.mode {
				t.Errorf("%s/%s: %v %v, want mode %v", root, c.rel, fi.Mode(), err, c.mode)
			}
		}
	}
	if l, _ := os.Readlink(filepath.Join(back, "copied", "link")); l != "run.sh" {
		t.Errorf("symlink came back as %q", l)
	}
	if b, _ := os.ReadFile(filepath.Join(back, "copied", "sub", "deep", "big")); len(b) != 3<<20 {
		t.Errorf("big file came back with %d bytes", len(b))
	}
	// A missing source is one clear error.
	if r := run(s, Request{Op: "get", Path: filepath.Join(guest, "nope")}, nil); r.exit.Code == 0 || !strings.Contains(r.exit.Error, "no such file") {
		t.Errorf("get of a missing path = %+v", r)
	}
}

func TestPortsAndDial(t *testing.T) {
	s := pair(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	r := run(s, Request{Op: "ports"}, nil)
	var ports []Port
	if err := json.Unmarshal([]byte(r.stdout), &ports); err != nil {
		t.Fatalf("ports: %v %q", err, r.stdout)
	}
	found := false
	for _, p := range ports {
		if p.Port == port && p.Proto == "tcp" && p.Addr == "127.0.0.1" && p.PID == os.Getpid() {
			found = true
		}
	}
	if !found {
		t.Errorf("listening port %d not among %+v", port, ports)
	}
	r = run(s, Request{Op: "dial", Addr: ln.Addr().String()}, strings.NewReader("ping through the agent"))
	if r.stdout != "ping through the agent" || r.exit.Code != 0 {
		t.Errorf("dial = %+v", r)
	}
	if r := run(s, Request{Op: "dial", Addr: "127.0.0.1:1"}, nil); r.err == nil || !strings.Contains(r.err.Error(), "connecting to 127.0.0.1:1") {
		t.Errorf("dial of a closed port = %+v", r)
	}
}

func TestPingAndSessionEnd(t *testing.T) {
	s := pair(t)
	h, err := s.Ping(context.Background())
	if err != nil || !h.Pong || h.UptimeMs < 0 {
		t.Fatalf("ping = %+v, %v", h, err)
	}
	st, _ := s.Open(context.Background(), Request{Op: "exec", Argv: []string{"sleep", "30"}})
	s.Close()
	if _, err := st.Wait(context.Background()); err == nil {
		t.Error("a stream outlived its session")
	}
	if _, err := s.Open(context.Background(), Request{Op: "sync"}); err == nil {
		t.Error("opened a stream on a closed session")
	}
}

// A channel that outlives its sessions (a virtio-serial port) survives a
// host that vanished mid-frame: the next host's sync marker is found
// past the leftovers.
func TestChannelResyncsAfterAHostVanishes(t *testing.T) {
	hostR, guestW := io.Pipe()
	guestR, hostW := io.Pipe()
	guest := NewChannel(struct {
		io.Reader
		io.Writer
	}{guestR, guestW})
	a := NewAgent(Options{Version: "test"})
	sessions := make(chan *Session, 2)
	go func() {
		for i := 0; i < 2; i++ {
			s, err := Server(guest, Hello{Agent: "test"}, a.Handle, nil)
			for err != nil {
				s, err = Server(guest, Hello{Agent: "test"}, a.Handle, nil)
			}
			sessions <- s
			<-s.Done()
		}
	}()
	// Host bytes the guest reads, and a reader of what the guest writes.
	hostReader := bufio.NewReader(hostR)
	nonce := bytes.Repeat([]byte{7}, NonceLen)
	first := append(syncBytes(nonce), helloFrame(Hello{Proto: ProtocolVersion})...)
	go hostW.Write(first)
	if _, err := huntSync(hostReader, nonce); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFrame(hostReader); err != nil {
		t.Fatal(err)
	}
	s1 := <-sessions
	// Half a frame, then silence: the host is gone.
	hostW.Write(AppendFrame(nil, Frame{Type: FrameOpen, Stream: 1, Payload: []byte(`{"op":"sync"}`)})[:7])
	// A new host arrives on the same channel.
	ch := NewChannelReader(hostReader, hostW)
	c2, err := Client(ch, Hello{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	<-s1.Done()
	<-sessions
	if r := run(c2, Request{Op: "exec", Argv: []string{"echo", "second host"}}, nil); r.stdout != "second host\n" {
		t.Errorf("second session = %+v", r)
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add(AppendFrame(nil, Frame{Type: FrameData, Stream: 3, Payload: []byte("hello")}))
	f.Add(AppendFrame(nil, Frame{Type: FrameWindow, Stream: 1, Payload: []byte{0, 1, 0, 0}}))
	f.Add([]byte{0xb4, 0x02, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff})
	f.Add(syncBytes(make([]byte, NonceLen)))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		for {
			fr, err := ReadFrame(r)
			if err != nil {
				return
			}
			if len(fr.Payload) > MaxPayload || !validType(fr.Type) {
				t.Fatalf("accepted %+v", fr)
			}
			enc := AppendFrame(nil, fr)
			back, err := ReadFrame(bufio.NewReader(bytes.NewReader(enc)))
			if err != nil || back.Type != fr.Type || back.Stream != fr.Stream || !bytes.Equal(back.Payload, fr.Payload) {
				t.Fatalf("round trip of %+v: %+v %v", fr, back, err)
			}
		}
	})
}
