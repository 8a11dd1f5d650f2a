package vm

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/paths"
	"banger/internal/store"
	"banger/internal/vmm"
	"banger/internal/vsockagent"
)

// stuckGuest is a VMM whose guest has gone bad: it ignores power-off
// requests (Stop waits out its context, then kills, as QEMU's does),
// and its agent channel is a flooding agent, which answers the greeting
// and then writes pings without end and never reads.
type stuckGuest struct {
	exited chan struct{}
	once   sync.Once
}

var _ vmm.Machine = (*stuckGuest)(nil)

func (m *stuckGuest) PID() int            { return 0 }
func (m *stuckGuest) ConsolePath() string { return "" }
func (m *stuckGuest) Kill() error         { m.once.Do(func() { close(m.exited) }); return nil }

func (m *stuckGuest) Stop(ctx context.Context) error {
	select {
	case <-m.exited:
	case <-ctx.Done():
		m.Kill()
	}
	return nil
}

func (m *stuckGuest) Wait(ctx context.Context) error {
	select {
	case <-m.exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *stuckGuest) DialAgent(ctx context.Context, port uint32) (net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 8<<10)
		f := os.NewFile(uintptr(fd), "agent")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	go flood(conns[1])
	return conns[0], nil
}

// flood is the bad guest's agent: marker, nonce and hello back, then
// pings until the connection breaks.
func flood(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	greeting := make([]byte, 12+vsockagent.NonceLen+10) // marker, nonce, hello header
	if _, err := io.ReadFull(r, greeting); err != nil {
		return
	}
	if _, err := r.Discard(int(binary.BigEndian.Uint32(greeting[len(greeting)-4:]))); err != nil {
		return
	}
	reply := append([]byte("\xb4BANGER\x00SYNC"), greeting[12:12+vsockagent.NonceLen]...)
	reply = vsockagent.AppendFrame(reply, vsockagent.Frame{Type: vsockagent.FrameHello, Payload: []byte(`{"proto":1,"agent":"stuck"}`)})
	if _, err := c.Write(reply); err != nil {
		return
	}
	var pings []byte
	for range 512 {
		pings = vsockagent.AppendFrame(pings, vsockagent.Frame{Type: vsockagent.FrameHello, Payload: []byte(`{"proto":1}`)})
	}
	for {
		if _, err := c.Write(pings); err != nil {
			return
		}
	}
}

// stuckVM records a running VM named name whose VMM is a stuckGuest, and
// opens the daemon's agent session to it, which the flood wedges.
func stuckVM(t *testing.T, name string) (*Service, api.VM, *stuckGuest) {
	t.Helper()
	layout, err := paths.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := layout.MkdirAll(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(t.Context(), layout.Database())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s := New(Deps{Layout: layout, Store: st, Log: slog.New(slog.DiscardHandler)})
	v := api.VM{ID: store.NewID(), Name: name, State: string(Running), VMM: "qemu", Network: "none", Dir: t.TempDir()}
	if err := st.InsertVM(t.Context(), &v, nil); err != nil {
		t.Fatal(err)
	}
	m := &stuckGuest{exited: make(chan struct{})}
	s.setMachine(v.ID, m)
	t.Cleanup(func() { s.closeAgents(); m.Kill() })
	if _, err := s.agentSession(t.Context(), v); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the pongs fill the guest's buffers
	return s, v, m
}

// result is how a VM verb ended.
type result struct {
	v   *api.VM
	err error
}

// vmAction runs a VM verb of s (stop or kill) in the background and
// delivers how it ended.
func vmAction(s *Service, name, action string) <-chan result {
	out := make(chan result, 1)
	go func() {
		verb := s.Stop
		if action == "kill" {
			verb = s.Kill
		}
		v, err := verb(context.Background(), Self(), name)
		out <- result{v, err}
	}()
	return out
}

// within waits for a verb to end up to limit, and fails t unless it
// succeeded.
func within(t *testing.T, what string, limit time.Duration, c <-chan result) result {
	t.Helper()
	select {
	case r := <-c:
		if r.err != nil {
			t.Errorf("%s: %v", what, r.err)
		}
		return r
	case <-time.After(limit):
		t.Fatalf("%s did not return within %s", what, limit)
		return result{}
	}
}

// A graceful stop of a guest that has stopped reading (its agent
// floods pings, ignores power-off) holds the VM's lock: a kill must cut
// it short, not wait for it, and the VM must end killed and stopped.
func TestKillCutsAStopOfAStuckGuest(t *testing.T) {
	s, v, m := stuckVM(t, "stuck")
	stop := vmAction(s, v.Name, "stop")
	// The stop is under way, holding the lock, once the VM is stopping;
	// then give it time to get stuck on the guest.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if cur, _ := s.store.VM(t.Context(), v.Name); cur.State == string(Stopping) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stop did not begin")
		}
	}
	time.Sleep(time.Second)
	kill := vmAction(s, v.Name, "kill")
	within(t, "vm kill during a stuck stop", 5*time.Second, kill)
	within(t, "the stop a kill cut short", 5*time.Second, stop)
	select {
	case <-m.exited:
	default:
		t.Error("the VMM was not killed")
	}
	if cur, err := s.store.VM(t.Context(), v.Name); err != nil || cur.State != string(Stopped) {
		t.Errorf("after the kill: %+v, %v", cur, err)
	}
}

// A stop alone is bounded too: the power-off through a stuck agent gives
// up after its 3 s, and the VMM's own stop then kills at its deadline.
func TestStopOfAStuckGuestGivesUpOnTheAgent(t *testing.T) {
	s, v, _ := stuckVM(t, "stuck")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	began := time.Now()
	err := s.agentPowerOff(ctx, v)
	if err == nil {
		t.Fatal("a guest that does not read powered off")
	}
	if took := time.Since(began); took > 4*time.Second {
		t.Errorf("the power-off through a stuck agent took %s (%v)", took, err)
	}
}

// ssh-key add pushes keys to every running VM: a stuck one must not
// hold the request past the push's bound.
func TestKeyPushToAStuckGuestIsBounded(t *testing.T) {
	s, v, _ := stuckVM(t, "stuck")
	if err := os.WriteFile(s.authorizedKeysPath(0), []byte("ssh-ed25519 AAAA test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { s.pushAuthorizedKeys(ctx, v); close(done) }()
	select {
	case <-done:
	case <-time.After(4 * time.Second):
		t.Fatal("pushing keys to a stuck guest outlived its context by 3 s")
	}
}

// Daemon shutdown waits for its jobs; one that talks to a guest that
// stopped reading (the keys pushed after a start) must not hold it.
func TestShutdownWithAJobOnAStuckGuest(t *testing.T) {
	s, v, _ := stuckVM(t, "stuck")
	if err := os.WriteFile(s.authorizedKeysPath(0), []byte("ssh-ed25519 AAAA test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.jobCtx, s.jobCancel = context.WithCancel(context.Background())
	s.jobs.Add(1)
	go func() { defer s.jobs.Done(); s.pushAuthorizedKeys(s.jobCtx, v) }()
	time.Sleep(300 * time.Millisecond)
	done := make(chan struct{})
	go func() { s.drainJobs(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("shutdown waited on a job stuck on a guest")
	}
}
