package system

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

// TestSpawnStartHook: the hook gets the very SysProcAttr the process is
// started with, may run start on a thread of its own (as cgroup v1's
// StartIn does), and a hook that fails or never starts the process
// leaves none.
func TestSpawnStartHook(t *testing.T) {
	sh := "/bin/sh"
	t.Run("runs start with the spawn's attr", func(t *testing.T) {
		var seen *syscall.SysProcAttr
		hook := func(attr *syscall.SysProcAttr, start func() error) error {
			seen = attr
			return start()
		}
		p, err := Spawn(sh, []string{"-c", "exit 3"}, nil, nil, nil, WithStartHook(hook))
		if err != nil {
			t.Fatal(err)
		}
		st, err := p.Wait()
		if err != nil || st.ExitCode() != 3 {
			t.Fatalf("wait: %v %v", st, err)
		}
		if seen == nil || !seen.Setsid {
			t.Errorf("the hook saw attr %+v, want Spawn's (Setsid)", seen)
		}
	})
	t.Run("start on another locked thread", func(t *testing.T) {
		hook := func(attr *syscall.SysProcAttr, start func() error) error {
			done := make(chan error, 1)
			go func() {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				done <- start()
			}()
			return <-done
		}
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		p, err := SpawnAs(sh, []string{"-c", "echo hi"}, nil, w, nil, nil, os.Getuid(), os.Getgid(), nil, WithStartHook(hook))
		w.Close()
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 16)
		n, _ := r.Read(b)
		p.Wait()
		if strings.TrimSpace(string(b[:n])) != "hi" {
			t.Errorf("output %q", b[:n])
		}
	})
	t.Run("a failing hook starts nothing", func(t *testing.T) {
		boom := errors.New("no cgroup")
		_, err := Spawn(sh, []string{"-c", "true"}, nil, nil, nil, WithStartHook(func(*syscall.SysProcAttr, func() error) error { return boom }))
		if !errors.Is(err, boom) {
			t.Errorf("err = %v, want it to wrap the hook's", err)
		}
	})
	t.Run("a hook that does not start is an error", func(t *testing.T) {
		_, err := Spawn(sh, []string{"-c", "true"}, nil, nil, nil, WithStartHook(func(*syscall.SysProcAttr, func() error) error { return nil }))
		if err == nil || !strings.Contains(err.Error(), "without starting") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("a hook that fails after the fork leaves no process", func(t *testing.T) {
		late := errors.New("could not move back")
		hook := func(attr *syscall.SysProcAttr, start func() error) error {
			if err := start(); err != nil {
				return err
			}
			return late
		}
		// It would sleep on if it were not killed; the odd duration
		// tells it from any other sleep.
		_, err := Spawn("/bin/sleep", []string{"61.2345"}, nil, nil, nil, WithStartHook(hook))
		if !errors.Is(err, late) {
			t.Fatalf("err = %v", err)
		}
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			if b, _ := os.ReadFile(p); strings.Contains(string(b), "61.2345") {
				t.Errorf("%s: %q still there after the hook failed", p, b)
			}
		}
	})
}
