package vsockagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/testenv"
)

// detachedAgent is an agent whose detached processes are killed when
// the test ends.
func detachedAgent(t *testing.T, opts Options) *Agent {
	t.Helper()
	opts.Version, opts.PowerOff = "test", func() {}
	a := NewAgent(opts)
	t.Cleanup(func() {
		a.procs.mu.Lock()
		defer a.procs.mu.Unlock()
		for pid := range a.procs.procs {
			syscall.Kill(-pid, syscall.SIGKILL)
		}
	})
	return a
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// readUntil reads r until what it read contains want, failing after 5 s.
func readUntil(t *testing.T, r io.Reader, want string) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		var b bytes.Buffer
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			b.Write(buf[:n])
			if strings.Contains(strings.ReplaceAll(b.String(), "\r", ""), want) || err != nil {
				got <- b.String()
				return
			}
		}
	}()
	select {
	case s := <-got:
		if !strings.Contains(strings.ReplaceAll(s, "\r", ""), want) {
			t.Fatalf("read %q, want %q in it", s, want)
		}
		return s
	case <-time.After(5 * time.Second):
		t.Fatalf("no %q within 5 s", want)
	}
	return ""
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestDetachedOutlivesItsStreamAndSession(t *testing.T) {
	a := detachedAgent(t, Options{})
	s1 := pairWith(t, a)
	ctx := ctxFor(t, 30*time.Second)
	pid, st, err := StartDetached(ctx, s1, Request{Argv: []string{"cat"}, Tag: "the-cat", Env: []string{"MINE=1"}})
	if err != nil || pid <= 0 {
		t.Fatalf("start = %d, %v", pid, err)
	}
	if err := SendStdin(ctx, s1, pid, strings.NewReader("one\n"), false); err != nil {
		t.Fatal(err)
	}
	readUntil(t, st, "one\n")

	// The stream ends: the process does not.
	st.Close()
	time.Sleep(100 * time.Millisecond)
	if !alive(pid) {
		t.Fatal("closing the stream killed the detached process")
	}
	procs, err := Procs(ctx, s1)
	if err != nil || len(procs) != 1 || procs[0].PID != pid || procs[0].Tag != "the-cat" || procs[0].Argv[0] != "cat" || procs[0].Env[0] != "MINE=1" || procs[0].TTY {
		t.Fatalf("procs = %+v, %v", procs, err)
	}

	// The whole session ends: neither.
	s1.Close()
	time.Sleep(100 * time.Millisecond)
	if !alive(pid) {
		t.Fatal("the session's end killed the detached process")
	}

	// A new session attaches, sees new output and the exit.
	s2 := pairWith(t, a)
	at, err := Attach(ctx, s2, pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := SendStdin(ctx, s2, pid, strings.NewReader("two\n"), true); err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(at)
	if string(out) != "two\n" {
		t.Errorf("attached output = %q, want only what came after the attach", out)
	}
	if e, err := at.Wait(ctx); err != nil || e.Code != 0 {
		t.Errorf("exit after stdin closed = %+v, %v", e, err)
	}
	if procs, _ := Procs(ctx, s2); len(procs) != 0 {
		t.Errorf("an exited process is still listed: %+v", procs)
	}
}

func TestTwoAttachersBothSeeOutput(t *testing.T) {
	a := detachedAgent(t, Options{})
	s := pairWith(t, a)
	ctx := ctxFor(t, 30*time.Second)
	pid, first, err := StartDetached(ctx, s, Request{Argv: []string{"cat"}})
	if err != nil {
		t.Fatal(err)
	}
	second, err := Attach(ctx, s, pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := SendStdin(ctx, s, pid, strings.NewReader("hello\n"), false); err != nil {
		t.Fatal(err)
	}
	readUntil(t, first, "hello\n")
	readUntil(t, second, "hello\n")
	if err := SignalProcess(ctx, s, pid, int(syscall.SIGTERM)); err != nil {
		t.Fatal(err)
	}
	for i, st := range []*Stream{first, second} {
		if e, err := st.Wait(ctx); err != nil || e.Code != 143 || e.Signal != "SIGTERM" {
			t.Errorf("attacher %d: exit %+v, %v", i, e, err)
		}
	}
	if err := SignalProcess(ctx, s, pid, int(syscall.SIGTERM)); !IsCode(err, CodeNoProcess) {
		t.Errorf("signal to an exited process = %v, want no_process", err)
	}
	if err := SignalProcess(ctx, s, 1, int(syscall.SIGTERM)); !IsCode(err, CodeNoProcess) {
		t.Errorf("signal to a pid the agent did not start = %v, want no_process", err)
	}
}

// An attacher that does not read is dropped once it is a buffer behind;
// the process and the other attacher go on at full speed.
func TestSlowAttacherIsDroppedNotWaitedFor(t *testing.T) {
	stallOverride.Store(int64(time.Second))
	t.Cleanup(func() { stallOverride.Store(0) })
	a := detachedAgent(t, Options{})
	s := pairWith(t, a)
	ctx := ctxFor(t, 60*time.Second)
	const size = 8 << 20
	pid, slow, err := StartDetached(ctx, s, Request{Argv: []string{"sh", "-c", fmt.Sprintf("read x; head -c %d /dev/zero", size)}})
	if err != nil {
		t.Fatal(err)
	}
	fast, err := Attach(ctx, s, pid)
	if err != nil {
		t.Fatal(err)
	}
	SendStdin(ctx, s, pid, strings.NewReader("go\n"), true)
	n, err := io.Copy(io.Discard, fast)
	if err != nil || n != size {
		t.Errorf("the reading attacher got %d bytes, %v; want %d", n, err, size)
	}
	if e, err := fast.Wait(ctx); err != nil || e.Code != 0 {
		t.Errorf("reading attacher's exit = %+v, %v", e, err)
	}
	if _, err := slow.Wait(ctx); !IsCode(err, CodeOverrun) {
		t.Errorf("the attacher that never read ended with %v, want overrun", err)
	}
}

func TestExitRetainedThenForgotten(t *testing.T) {
	retainOverride.Store(int64(400 * time.Millisecond))
	t.Cleanup(func() { retainOverride.Store(0) })
	a := detachedAgent(t, Options{})
	s := pairWith(t, a)
	ctx := ctxFor(t, 30*time.Second)
	pid, st, err := StartDetached(ctx, s, Request{Argv: []string{"sh", "-c", "echo bye; exit 7"}})
	if err != nil {
		t.Fatal(err)
	}
	readUntil(t, st, "bye\n")
	if e, err := st.Wait(ctx); err != nil || e.Code != 7 {
		t.Fatalf("exit = %+v, %v", e, err)
	}
	late, err := Attach(ctx, s, pid)
	if err != nil {
		t.Fatalf("attach within the retention: %v", err)
	}
	if out, _ := io.ReadAll(late); len(out) != 0 {
		t.Errorf("a late attach replayed %q", out)
	}
	if e, err := late.Wait(ctx); err != nil || e.Code != 7 {
		t.Errorf("late attach's exit = %+v, %v", e, err)
	}
	time.Sleep(700 * time.Millisecond)
	if _, err := Attach(ctx, s, pid); !IsCode(err, CodeNoProcess) {
		t.Errorf("attach after the retention = %v, want no_process", err)
	}
	var ae *AgentError
	if _, err := Attach(ctx, s, 999999); !errors.As(err, &ae) || ae.Code != CodeNoProcess {
		t.Errorf("attach to an unknown pid = %v", err)
	}
}

func TestDetachedStdinAndTerminalErrors(t *testing.T) {
	a := detachedAgent(t, Options{})
	s := pairWith(t, a)
	ctx := ctxFor(t, 30*time.Second)
	no := false
	pid, st, err := StartDetached(ctx, s, Request{Argv: []string{"sh", "-c", "cat; echo after-eof"}, Stdin: &no})
	if err != nil {
		t.Fatal(err)
	}
	// /dev/null: cat ends at once.
	readUntil(t, st, "after-eof\n")
	if e, err := st.Wait(ctx); err != nil || e.Code != 0 {
		t.Errorf("exit = %+v, %v", e, err)
	}
	pid, _, err = StartDetached(ctx, s, Request{Argv: []string{"sleep", "30"}, Stdin: &no})
	if err != nil {
		t.Fatal(err)
	}
	if err := SendStdin(ctx, s, pid, strings.NewReader("x"), false); !IsCode(err, CodeNoStdin) {
		t.Errorf("stdin to a process without one = %v, want no_stdin", err)
	}
	if err := ResizeProcess(ctx, s, pid, Winsize{Rows: 10, Cols: 10}); !IsCode(err, CodeNotTTY) {
		t.Errorf("resize without a terminal = %v, want not_tty", err)
	}
	if err := SendStdin(ctx, s, 999999, strings.NewReader("x"), false); !IsCode(err, CodeNoProcess) {
		t.Errorf("stdin to an unknown pid = %v, want no_process", err)
	}
	// Closing twice: the second finds no stdin.
	pid, st, err = StartDetached(ctx, s, Request{Argv: []string{"sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := SendStdin(ctx, s, pid, strings.NewReader(""), true); err != nil {
		t.Fatal(err)
	}
	if err := SendStdin(ctx, s, pid, strings.NewReader(""), true); !IsCode(err, CodeNoStdin) {
		t.Errorf("stdin after close = %v, want no_stdin", err)
	}
	// SIGNAL frames on an attached stream reach the process too.
	st.Signal(int(syscall.SIGINT))
	if e, err := st.Wait(ctx); err != nil || e.Signal != "SIGINT" {
		t.Errorf("exit after a SIGNAL frame = %+v, %v", e, err)
	}
}

func TestDetachedTerminalResize(t *testing.T) {
	a := detachedAgent(t, Options{})
	s := pairWith(t, a)
	ctx := ctxFor(t, 30*time.Second)
	pid, st, err := StartDetached(ctx, s, Request{Argv: []string{"sh", "-c", "stty size; read x; stty size"}, TTY: true, Rows: 40, Cols: 100})
	if err != nil {
		t.Fatal(err)
	}
	readUntil(t, st, "40 100\n")
	if err := ResizeProcess(ctx, s, pid, Winsize{Rows: 50, Cols: 120}); err != nil {
		t.Fatal(err)
	}
	if err := SendStdin(ctx, s, pid, strings.NewReader("\n"), true); !IsCode(err, CodeInvalid) {
		t.Errorf("closing a terminal's input = %v, want invalid", err)
	}
	if err := SendStdin(ctx, s, pid, strings.NewReader("\n"), false); err != nil {
		t.Fatal(err)
	}
	readUntil(t, st, "50 120\n")
	if e, err := st.Wait(ctx); err != nil || e.Code != 0 {
		t.Errorf("exit = %+v, %v", e, err)
	}
}

func TestDetachedMissingCommandIsExit127(t *testing.T) {
	a := detachedAgent(t, Options{})
	s := pairWith(t, a)
	ctx := ctxFor(t, 30*time.Second)
	for _, argv := range [][]string{{"no-such-command"}, {"/no/such/path"}} {
		pid, st, err := StartDetached(ctx, s, Request{Argv: argv})
		if err != nil || pid != 0 {
			t.Fatalf("%v: start = %d, %v; want pid 0 and an exit", argv, pid, err)
		}
		if e, err := st.Wait(ctx); err != nil || e.Code != 127 || !strings.Contains(e.Error, "not found") {
			t.Errorf("%v: exit = %+v, %v; want 127", argv, e, err)
		}
	}
	script := filepath.Join(t.TempDir(), "noexec")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o644)
	// No x bit: not even root may run it.
	if _, st, err := StartDetached(ctx, s, Request{Argv: []string{script}}); err != nil {
		t.Fatal(err)
	} else if e, _ := st.Wait(ctx); e.Code != 126 {
		t.Errorf("not executable: exit %+v, want 126", e)
	}
	// A missing working directory is still a request error.
	if _, _, err := StartDetached(ctx, s, Request{Argv: []string{"true"}, Dir: "/no/such/dir"}); !IsCode(err, CodeInvalid) {
		t.Errorf("missing cwd = %v, want invalid", err)
	}
	if _, _, err := StartDetached(ctx, s, Request{Argv: []string{"true"}, User: "nobody-here"}); !IsCode(err, CodeNoUser) {
		t.Errorf("unknown user = %v, want no_user", err)
	}
}

func TestDetachedTimeoutKills(t *testing.T) {
	a := detachedAgent(t, Options{})
	s := pairWith(t, a)
	ctx := ctxFor(t, 30*time.Second)
	_, st, err := StartDetached(ctx, s, Request{Argv: []string{"sleep", "30"}, TimeoutMs: 200})
	if err != nil {
		t.Fatal(err)
	}
	st.Close() // detached: the timeout still applies
	time.Sleep(50 * time.Millisecond)
	procs, _ := Procs(ctx, s)
	if len(procs) != 1 {
		t.Fatalf("procs = %+v", procs)
	}
	late, err := Attach(ctx, s, procs[0].PID)
	if err != nil {
		t.Fatal(err)
	}
	if e, err := late.Wait(ctx); err != nil || !e.TimedOut || e.Signal != "SIGKILL" {
		t.Errorf("exit = %+v, %v; want timed out by SIGKILL", e, err)
	}
}

// STARTED goes only to a host that asked for it: a host from before it
// would take the unknown frame for a broken channel.
func TestStartedOnlyWhenAsked(t *testing.T) {
	s := pair(t)
	ctx := ctxFor(t, 30*time.Second)
	st, err := s.Open(ctx, Request{Op: "exec", Argv: []string{"echo", "hi"}})
	if err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	io.ReadAll(st)
	st.Wait(ctx)
	if len(st.started) != 0 {
		t.Error("a plain exec sent STARTED")
	}
	st, err = s.Open(ctx, Request{Op: "exec", Argv: []string{"sh", "-c", "echo $$"}, ReportPID: true})
	if err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	pid, err := st.Started(ctx)
	out, _ := io.ReadAll(st)
	if err != nil || pid <= 0 || strings.TrimSpace(string(out)) != fmt.Sprint(pid) {
		t.Errorf("report_pid: STARTED %d (%v), the shell says %q", pid, err, out)
	}
}

func TestDetachedRunsAsTheUserWithItsGroups(t *testing.T) {
	testenv.RequireRoot(t)
	root := t.TempDir()
	home := t.TempDir()
	writeEtc(t, root, home)
	a := detachedAgent(t, Options{Root: root})
	s := pairWith(t, a)
	ctx := ctxFor(t, 30*time.Second)
	_, st, err := StartDetached(ctx, s, Request{Argv: []string{"sh", "-c", "id -u; id -g; id -G; echo $HOME $USER"}, User: "tuser", Dir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(st)
	want := fmt.Sprintf("%d\n%d\n%d %d\n%s tuser\n", testUID, testUID, testUID, testUID+1, home)
	if string(out) != want {
		t.Errorf("as tuser: %q, want %q", out, want)
	}
}

const testUID = 42421

// writeEtc writes root/etc/{passwd,group} with root and tuser (uid and
// gid testUID, home home, also in group extra).
func writeEtc(t *testing.T, root, home string) {
	t.Helper()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), fmt.Appendf(nil, "root:x:0:0:root:/root:/bin/sh\ntuser:x:%d:%d::%s:/bin/sh\n", testUID, testUID, home), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), fmt.Appendf(nil, "root:x:0:\ntuser:x:%d:\nextra:x:%d:someone,tuser\n", testUID, testUID+1), 0o644)
}

// TestStartedBeforeExit: a process that exits at once has its STARTED,
// EXIT and CLOSE all read before the opener asks for its pid; the pid
// still comes back (it once came back 0 about half the time, as if the
// program did not exist).
func TestStartedBeforeExit(t *testing.T) {
	for i := range 500 {
		st := newStream(nil, 1, Request{Op: "exec", Detach: true})
		for _, f := range []Frame{{Type: FrameStarted, Payload: []byte(`{"pid":42}`)}, {Type: FrameExit, Payload: []byte(`{"code":1}`)}} {
			if err := st.deliver(f); err != nil {
				t.Fatal(err)
			}
		}
		st.abort(io.EOF) // what CLOSE does
		if pid, err := st.Started(context.Background()); pid != 42 || err != nil {
			t.Fatalf("try %d: Started = %d, %v; want 42", i, pid, err)
		}
	}
}
