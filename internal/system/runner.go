// Package system is the only place in banger that runs host commands.
//
// Everything else asks a CommandRunner (and, where a command reads a script
// from standard input, a StdinRunner) so that every host command has one
// cancellation policy, one error format and one seam for tests. It does not
// decide which commands to run; its callers build the argument lists.
package system

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// CommandRunner runs a host command to completion.
type CommandRunner interface {
	// Run runs name with args and returns its standard output. A non-zero
	// exit is returned as a *CommandError carrying the tail of stderr.
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// StdinRunner is implemented by runners that can feed a command's standard
// input. Callers find it by type assertion on a CommandRunner.
type StdinRunner interface {
	// RunStdin runs name with args, copying stdin to its standard input.
	// It returns standard output and standard error interleaved, because
	// tools such as debugfs report per-line failures on either stream.
	RunStdin(ctx context.Context, stdin io.Reader, name string, args ...string) ([]byte, error)
}

// StdoutRunner is implemented by runners that can stream a command's
// standard output to a writer instead of buffering it, for commands that
// write a whole file system there. Callers find it by type assertion.
type StdoutRunner interface {
	// RunStdout runs name with args, copying its standard output to
	// stdout as it comes. A non-zero exit is a *CommandError with the
	// tail of stderr.
	RunStdout(ctx context.Context, stdout io.Writer, name string, args ...string) error
}

// CommandError is a host command that could not run or exited non-zero.
type CommandError struct {
	Name     string
	Args     []string
	ExitCode int    // -1 when the command did not start or was killed
	Stderr   string // trimmed tail, at most stderrTail bytes
	Err      error
}

const stderrTail = 2048

func (e *CommandError) Error() string {
	msg := fmt.Sprintf("%s: %v", e.Name, e.Err)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *CommandError) Unwrap() error { return e.Err }

// Runner is the real CommandRunner and StdinRunner. The zero value is ready
// to use. Cancelling the context sends SIGTERM, then SIGKILL after WaitDelay.
type Runner struct {
	// WaitDelay bounds how long a cancelled command may linger before it is
	// killed and its pipes closed. Zero means 5 seconds.
	WaitDelay time.Duration
}

var (
	_ CommandRunner = Runner{}
	_ StdinRunner   = Runner{}
	_ StdoutRunner  = Runner{}
)

func (r Runner) command(ctx context.Context, name string, args []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = r.WaitDelay
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = 5 * time.Second
	}
	return cmd
}

// Run implements CommandRunner.
func (r Runner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := r.command(ctx, name, args)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.Bytes(), commandError(ctx, name, args, err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// RunStdin implements StdinRunner.
func (r Runner) RunStdin(ctx context.Context, stdin io.Reader, name string, args ...string) ([]byte, error) {
	cmd := r.command(ctx, name, args)
	var out bytes.Buffer
	cmd.Stdin = stdin
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), commandError(ctx, name, args, err, out.String())
	}
	return out.Bytes(), nil
}

// RunStdout implements StdoutRunner.
func (r Runner) RunStdout(ctx context.Context, stdout io.Writer, name string, args ...string) error {
	cmd := r.command(ctx, name, args)
	var stderr bytes.Buffer
	cmd.Stdout = stdout
	cmd.Stderr = &tailBuffer{buf: &stderr, max: 64 << 10}
	if err := cmd.Run(); err != nil {
		return commandError(ctx, name, args, err, stderr.String())
	}
	return nil
}

// tailBuffer keeps about the last max bytes written to it: a long-running
// command's chatter must not grow without bound.
type tailBuffer struct {
	buf *bytes.Buffer
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf.Write(p)
	if t.buf.Len() > 2*t.max {
		b := append([]byte(nil), t.buf.Bytes()[t.buf.Len()-t.max:]...)
		t.buf.Reset()
		t.buf.Write(b)
	}
	return len(p), nil
}

func commandError(ctx context.Context, name string, args []string, err error, stderr string) error {
	ce := &CommandError{Name: name, Args: args, ExitCode: -1, Stderr: Tail(stderr, stderrTail), Err: err}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		ce.ExitCode = exitErr.ExitCode()
	}
	if errors.Is(err, exec.ErrNotFound) {
		ce.Err = fmt.Errorf("%w: install it (see `banger doctor`)", err)
	}
	if ctx.Err() != nil {
		ce.Err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
	}
	return ce
}

// Tail returns the last max bytes of s with surrounding white space
// trimmed and line breaks folded, so it fits a one-line error.
func Tail(s string, max int) string {
	s = strings.TrimSpace(s)
	if len(s) > max {
		s = "…" + s[len(s)-max:]
	}
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " | ")), " ")
}

// LookPath reports where name is found on PATH.
func LookPath(name string) (string, error) { return exec.LookPath(name) }
