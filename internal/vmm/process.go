package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"banger/internal/system"
)

// Process is a VMM process a backend started: its pid, its end and a way
// to kill it. Backends embed it in their Machine. Safe for concurrent
// use; any number of callers may Wait.
type Process struct {
	proc  *os.Process
	exit  chan struct{}
	state *os.ProcessState
	log   string // the file its standard error goes to
}

// StartProcess starts bin in a new session (it outlives its starter) in
// dir ("" keeps the caller's), with standard output and error on the
// given files and extra files from descriptor 3 on, through hook (nil:
// directly; see Spec.StartHook).
func StartProcess(hook system.StartHook, dir, bin string, args []string, stdout, stderr *os.File, extra ...*os.File) (*Process, error) {
	proc, err := system.SpawnIn(dir, bin, args, os.Environ(), stdout, stderr, extra, system.WithStartHook(hook))
	if err != nil {
		return nil, err
	}
	p := &Process{proc: proc, exit: make(chan struct{}), log: stderr.Name()}
	go func() {
		p.state, _ = proc.Wait()
		close(p.exit)
	}()
	return p, nil
}

// LogTail is the end of the process's standard error log, on one line,
// for error messages.
func (p *Process) LogTail() string {
	b, _ := os.ReadFile(p.log)
	return system.Tail(string(b), 400)
}

// PID is the process id.
func (p *Process) PID() int { return p.proc.Pid }

// Exited is closed when the process has ended.
func (p *Process) Exited() <-chan struct{} { return p.exit }

// ExitState describes how the process ended; call it after Exited.
func (p *Process) ExitState() string {
	if p.state == nil {
		return "still running"
	}
	return p.state.String()
}

// ExitSignal is the signal that ended the process (SIGKILL from the
// OOM killer, say), 0 when it exited by itself; known is false while it
// runs, and for an attached process, whose status went to the daemon
// that started it.
func (p *Process) ExitSignal() (sig syscall.Signal, known bool) {
	select {
	case <-p.exit:
	default:
		return 0, false
	}
	if p.state == nil {
		return 0, false
	}
	if ws, ok := p.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ws.Signal(), true
	}
	return 0, true
}

// Wait blocks until the process exits or ctx ends.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.exit:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Kill ends the process at once; an already ended one is fine.
func (p *Process) Kill() error {
	err := p.proc.Signal(syscall.SIGKILL)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// AttachProcess adopts a VMM process someone else started (this daemon
// before a restart): pid must be running, log is its standard error
// file. Its end is watched through a pidfd, since it is not our child;
// the pidfd also keeps a reused pid from being signalled by mistake.
func AttachProcess(pid int, log string) (*Process, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("attaching to VMM process %d: %w", pid, err)
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	p := &Process{proc: proc, exit: make(chan struct{}), log: log}
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != unix.EINTR {
				break
			}
		}
		close(p.exit)
	}()
	return p, nil
}

// ExitError is a VMM that ended when it should not have, while it was
// doing what: Is(ErrExited), with the signal that ended it (0 when it
// exited by itself, or that is unknown) for callers that tell causes
// apart (SIGBUS: guest RAM that could not be had).
type ExitError struct {
	What   string
	Signal syscall.Signal
	State  string // how it ended, as os.ProcessState says it
	Tail   string // the end of its log
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("%s%s (%s): %s", ErrExited, e.What, e.State, e.Tail)
}

func (e *ExitError) Unwrap() error { return ErrExited }

// ExitError describes the process's end, which happened while it was
// doing what (" before its API socket appeared", say).
func (p *Process) ExitError(what string) error {
	sig, _ := p.ExitSignal()
	return &ExitError{What: what, Signal: sig, State: p.ExitState(), Tail: p.LogTail()}
}
