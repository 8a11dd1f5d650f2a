// Package cli is the banger command line: cobra commands that ask bangerd
// (through package client) and render its answers as tables, plain lines
// or --json. It never touches images, VMs or the store itself.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"banger/client"
	"banger/internal/paths"
	"banger/internal/system"
)

// exitError carries an exit status; main exits with it.
type exitError struct {
	code int
	err  error // nil: print nothing (the status says it all)
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// ExitCode is the process exit status for e.
func (e *exitError) ExitCode() int { return e.code }

// app is the state shared by every command of one invocation.
type app struct {
	home    string // --home
	host    string // --host
	debug   bool
	layout  paths.Layout
	c       *client.Client
	autoErr error
	// subject is the VM a command works on, when it names one: if
	// bangerd stops mid-request, the error says what became of it.
	subject string
}

// Execute runs the CLI with args and returns the process exit status. It
// prints errors itself, once.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{}
	root := newRootCommand(a)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(stderr, "banger:", safeText(ee.err.Error()))
		}
		return ee.code
	}
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "banger: interrupted")
		return 130
	}
	var stopped *client.DaemonStoppedError
	if errors.As(err, &stopped) {
		fmt.Fprintln(stderr, "banger:", safeText(a.daemonStopped(ctx)))
		return 1
	}
	// An error may quote a guest's console (a VM that did not start).
	fmt.Fprintln(stderr, "banger:", safeText(err.Error()))
	return 1
}

// daemonStopped says, in plain words, that bangerd went away during the
// request, where its log is, and what became of the VM the command
// worked on: asked of a daemon started again (its start cleans up and
// records what it finds).
func (a *app) daemonStopped(ctx context.Context) string {
	msg := "bangerd stopped during the request"
	if log := a.layout.DaemonLog(); log != "" {
		msg += ": its log is " + log
	}
	if a.subject == "" {
		return msg + "; `banger vm ls` shows what exists now"
	}
	a.c = nil
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := a.client(ctx)
	if err != nil {
		return msg + fmt.Sprintf("; %s's state is unknown until bangerd runs again (`banger vm show %s`)", a.subject, a.subject)
	}
	v, err := c.VM(ctx, a.subject)
	switch {
	case err != nil:
		return msg + fmt.Sprintf("; %s was not made: nothing of it is left", a.subject)
	case v.State == "running":
		return msg + fmt.Sprintf("; %s is running", v.Name)
	case v.State == "error":
		return msg + fmt.Sprintf("; %s is in error: `banger vm start %s`, or `banger vm rm %s`", v.Name, v.Name, v.Name)
	default:
		return msg + fmt.Sprintf("; %s is %s: `banger vm start %s`, or `banger vm rm %s`", v.Name, v.State, v.Name, v.Name)
	}
}

func (a *app) init() error {
	l, err := paths.FromEnv(a.home)
	if err != nil {
		return err
	}
	a.layout = l
	return nil
}

// socket is where the daemon is expected: --host, $BANGER_HOST, then the
// layout's socket.
func (a *app) socket() (string, bool) {
	if a.host != "" {
		return a.host, true
	}
	if h := os.Getenv(paths.EnvHost); h != "" {
		return h, true
	}
	return a.layout.Socket(), false
}

// client returns a client of a daemon that answers, starting one in the
// background when none does and the user may (root, or a per-user home),
// unless BANGER_NO_AUTOSTART=1.
func (a *app) client(ctx context.Context) (*client.Client, error) {
	if a.c != nil {
		return a.c, nil
	}
	sock, explicit := a.socket()
	c := client.New(sock)
	_, err := c.Status(ctx)
	// A daemon that is starting (reconciling before it serves) or
	// stopping holds the socket but may drop a connection: ask again for
	// a little while before judging.
	var ae *client.APIError
	var de *client.DialError
	for deadline := time.Now().Add(15 * time.Second); err != nil && !errors.As(err, &de) && !errors.As(err, &ae) && time.Now().Before(deadline) && ctx.Err() == nil; {
		time.Sleep(100 * time.Millisecond)
		_, err = c.Status(ctx)
	}
	if err == nil {
		a.c = c
		return c, nil
	}
	if !errors.As(err, &de) {
		return nil, err
	}
	if explicit || os.Getenv(paths.EnvNoAutostart) == "1" || (os.Geteuid() != 0 && a.layout.Home == "") {
		return nil, fmt.Errorf("%v: start it with `sudo systemctl start bangerd` (or `bangerd`), or set BANGER_HOME=DIR to run a per-user instance", de)
	}
	if err := a.startDaemon(ctx, c); err != nil {
		return nil, err
	}
	a.c = c
	return c, nil
}

func (a *app) startDaemon(ctx context.Context, c *client.Client) error {
	bin, err := paths.CompanionBinaryPath("bangerd")
	if err != nil {
		if p, perr := system.LookPath("bangerd"); perr == nil {
			bin = p
		} else {
			return fmt.Errorf("no daemon answers and bangerd is not installed: %w", err)
		}
	}
	var args []string
	if a.layout.Home != "" {
		args = append(args, "--home", a.layout.Home)
	}
	errLog := filepath.Join(a.layout.RunDir, "bangerd.stderr")
	os.MkdirAll(a.layout.RunDir, 0o755)
	exited, err := system.StartDetached(bin, args, os.Environ(), errLog)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := c.Status(ctx); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case err := <-exited:
			// Its own last word (a bad config, a taken socket) beats the
			// log, which it may not have reached.
			if b, _ := os.ReadFile(errLog); len(strings.TrimSpace(string(b))) > 0 {
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				return errors.New(strings.TrimPrefix(lines[len(lines)-1], "bangerd: "))
			}
			return fmt.Errorf("bangerd exited before it answered (%v): %s", err, lastLogLine(a.layout.DaemonLog()))
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("started %s but it did not answer on %s within 15s: see %s", bin, c.Socket(), a.layout.DaemonLog())
}

// argsError adds the help hint to cobra's argument errors.
func argsError(v cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := v(cmd, args); err != nil {
			return fmt.Errorf("%w\nSee '%s --help'", err, cmd.CommandPath())
		}
		return nil
	}
}

// lastLogLine is the message of the daemon log's last line, or where the
// log is when there is none.
func lastLogLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(strings.TrimSpace(string(b))) == 0 {
		return "see " + path
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var rec struct {
		Msg string `json:"msg"`
		Err string `json:"err"`
	}
	last := lines[len(lines)-1]
	if json.Unmarshal([]byte(last), &rec) == nil && rec.Msg != "" {
		if rec.Err != "" {
			return rec.Msg + ": " + rec.Err
		}
		return rec.Msg
	}
	return last
}
