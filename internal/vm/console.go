package vm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/consolelog"
	"banger/internal/system"
	"banger/internal/vmm"
	"banger/internal/vsockagent"
)

// This file is the serial console: its writer, `bangerd console-log`,
// started before each VMM and gone with it; reading the console for the
// ready line and the telling lines of a failed boot; serving `vm logs`.

// consolePath is the console log of the VM in dir.
func consolePath(dir string) string { return filepath.Join(dir, vmm.ConsoleLog) }

// consoleLogMax is the cap on each VM's console log (console_log_max).
func (s *Service) consoleLogMax() int64 {
	n, err := config.ParseSize(s.cfg.ConsoleLogMax)
	if err != nil || n == 0 {
		return consolelog.DefaultMax
	}
	return n
}

// startConsole starts the writer of v's console log, `bangerd
// console-log`, which outlives this daemon as the VMM does, so the cap
// holds while no daemon runs. It returns the writing end of its pipe,
// for the VMM's spec (close it once the VMM has its copy: the helper
// ends when the VMM does), and a channel closed once the helper has
// written all and exited.
func (s *Service) startConsole(v api.VM) (*os.File, <-chan struct{}, error) {
	if s.consoleWriter != nil {
		return s.consoleWriter(consolePath(v.Dir), s.consoleLogMax())
	}
	exe, err := HelperBinary()
	if err != nil {
		return nil, nil, fmt.Errorf("the console log is kept by `bangerd %s`, and this daemon cannot run it (%v): run the bangerd binary", consolelog.HelperCommand, err)
	}
	// Its rare complaints (a full disk) go to the daemon's log.
	errLog, err := os.OpenFile(s.layout.DaemonLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("opening log %s for the console log helper: %w", s.layout.DaemonLog(), err)
	}
	defer errLog.Close()
	// In the VM's cgroup: what it costs to keep up with a guest that
	// floods its console is that VM's to pay, in CPU time and memory.
	w, p, err := consolelog.StartHelper(exe, consolePath(v.Dir), s.consoleLogMax(), errLog, system.WithStartHook(s.inCgroup(v)))
	if err != nil {
		return nil, nil, err
	}
	written := make(chan struct{})
	go func() {
		p.Wait() // a child of this daemon until it restarts: reaped here
		close(written)
	}()
	return w, written, nil
}

// endConsole makes sure no console log helper of the VM in dir is left
// once its VMM is gone. Each ends by itself when the VMM's end of the
// pipe closes, after writing the last lines; one still there after two
// seconds (something else holds the pipe) is killed. While a VMM of the
// VM runs it does nothing: its console must go on being written, and
// whoever ends it calls again.
func (s *Service) endConsole(dir string) {
	if len(vmmProcesses(dir)) > 0 {
		return
	}
	path := consolePath(dir)
	for deadline := time.Now().Add(2 * time.Second); len(consoleHelpers(path)) > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	for _, pid := range consoleHelpers(path) {
		s.log.Warn("console log helper outlived its VMM: killed", "path", path, "pid", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// consoleHelpers finds the console log helpers of the log at path, by
// their command lines (they may be another daemon's children).
func consoleHelpers(path string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(path)) || !consolelog.IsHelper(argv(b), path) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// argv splits a /proc/PID/cmdline.
func argv(cmdline []byte) []string {
	return strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
}

// waitReady reads the console from where it stood at launch (since) for
// the agent's ready line, only what is new at each look. The VMM exiting
// or the timeout end the wait with the boot's telling lines; written is
// closed once the console's writer is done (the VMM's last lines, a
// panic, reach the log after the VMM has gone).
func waitReady(m vmm.Machine, since *consolelog.Follower, written <-chan struct{}, timeout time.Duration) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exited := make(chan struct{})
	go func() {
		if m.Wait(ctx) == nil {
			close(exited)
		}
	}()
	ready := consolelog.NewScanner(vsockagent.ReadyLine)
	boot := consolelog.NewRecent(16 << 10)
	seen := io.MultiWriter(ready, boot)
	buf := make([]byte, 32<<10)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		io.CopyBuffer(seen, since, buf)
		if ready.Found() {
			return nil
		}
		select {
		case <-exited:
			select {
			case <-written:
			case <-time.After(2 * time.Second):
			}
			io.CopyBuffer(seen, since, buf)
			return fmt.Errorf("the VM stopped before it was ready; console: %s", consoleTail(boot.Bytes()))
		case <-deadline.C:
			return fmt.Errorf("the VM was not ready within %s; console: %s", timeout, consoleTail(boot.Bytes()))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// consoleTail is the telling part of a boot's console on one line: the
// init stage's fatal error or the kernel's panic when there is one, else
// the last few lines.
func consoleTail(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for _, l := range lines {
		if strings.Contains(l, "banger-init: FATAL") || strings.Contains(l, "Kernel panic") {
			return system.Tail(l, 600)
		}
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return system.Tail(strings.Join(lines, "\n"), 600)
}

// Logs writes the VM name's console to w (its older rotated half
// first), calling flush after each write; with follow it keeps writing
// new output until ctx ends.
func (s *Service) Logs(ctx context.Context, c Caller, name string, follow bool, w io.Writer, flush func()) error {
	v, err := s.lookup(ctx, c, name)
	if err != nil {
		return err
	}
	console := consolelog.Follow(consolePath(v.Dir), true)
	defer console.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := console.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil
			}
			flush()
			continue
		}
		if err != nil && err != io.EOF {
			return nil
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}
