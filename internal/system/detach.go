package system

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// StartDetached starts path like Spawn, with its standard output on
// /dev/null and its standard error in the file errPath (truncated; ""
// for /dev/null), and returns without waiting for it: the process
// outlives the caller; it is how the CLI starts bangerd. The channel
// yields how the process ended, should it end while the caller still
// runs (a daemon that fails to start says why in errPath).
func StartDetached(path string, args []string, env []string, errPath string) (<-chan error, error) {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", os.DevNull, err)
	}
	defer devnull.Close()
	errOut := devnull
	if errPath != "" {
		if errOut, err = os.OpenFile(errPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600); err != nil {
			return nil, err
		}
		defer errOut.Close()
	}
	proc, err := Spawn(path, args, env, devnull, errOut)
	if err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() {
		state, err := proc.Wait()
		if err == nil {
			err = errors.New(state.String())
		}
		exited <- err
	}()
	return exited, nil
}

// StartHook starts a process: it must call start, which forks and execs
// it with attr as its SysProcAttr, exactly once, and return its error.
// Around that call it may change attr or choose the thread start runs
// on; that is how a caller places a process in a cgroup or a namespace
// from its first instruction (cgroup.Manager.StartIn has this shape).
type StartHook func(attr *syscall.SysProcAttr, start func() error) error

// SpawnOption tunes how a Spawn starts its process.
type SpawnOption func(*spawnConfig)

type spawnConfig struct {
	hook StartHook
}

// WithStartHook starts the process through h. Default (or a nil h):
// the process is started directly, in the caller's cgroups and
// namespaces.
func WithStartHook(h StartHook) SpawnOption {
	return func(c *spawnConfig) { c.hook = h }
}

// Spawn starts path in a new session with standard input on /dev/null
// and standard output and error on stdout and stderr (log files,
// typically), and returns the process without waiting for it. It is how
// VMMs start: they must outlive the request, and the daemon, that
// started them.
func Spawn(path string, args []string, env []string, stdout, stderr *os.File, opts ...SpawnOption) (*os.Process, error) {
	return SpawnIn("", path, args, env, stdout, stderr, nil, opts...)
}

// SpawnIn is Spawn with dir as the working directory ("" keeps the
// caller's: a VMM given relative socket paths creates them there) and
// extra files from descriptor 3 on (a VMM's console pipe).
func SpawnIn(dir, path string, args []string, env []string, stdout, stderr *os.File, extra []*os.File, opts ...SpawnOption) (*os.Process, error) {
	return spawnWith(dir, path, args, env, stdout, stderr, extra, &syscall.SysProcAttr{Setsid: true}, opts)
}

// SpawnIsolated is Spawn in a mount namespace of its own, with extra
// files from descriptor 3 on. For a uid other than 0 it also runs in a
// user namespace whose root is uid:gid on the host: it has root's powers
// over its own namespaces and nothing but that user's rights outside.
// It is how virtiofsd runs for a caller.
func SpawnIsolated(path string, args []string, env []string, stderr *os.File, extra []*os.File, uid, gid int, opts ...SpawnOption) (*os.Process, error) {
	attr := &syscall.SysProcAttr{Setsid: true, Cloneflags: syscall.CLONE_NEWNS}
	if uid != 0 {
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}}
		attr.Credential = &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true}
	}
	return spawnWith("", path, args, env, nil, stderr, extra, attr, opts)
}

// spawnWith starts path in dir ("" keeps the caller's) with attr, extra
// files from descriptor 3 on, and stdin (and stdout or stderr when nil)
// on /dev/null, through the options' start hook; every Spawn is one.
func spawnWith(dir, path string, args []string, env []string, stdout, stderr *os.File, extra []*os.File, attr *syscall.SysProcAttr, opts []SpawnOption) (*os.Process, error) {
	var cfg spawnConfig
	for _, o := range opts {
		o(&cfg)
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", os.DevNull, err)
	}
	defer devnull.Close()
	if stdout == nil {
		stdout = devnull
	}
	if stderr == nil {
		// A nil *os.File in the io.Writer would not read as "none".
		stderr = devnull
	}
	cmd := exec.Command(path, args...)
	cmd.Env, cmd.Dir = env, dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, stdout, stderr
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = attr
	start := cmd.Start
	if cfg.hook != nil {
		start = func() error { return cfg.hook(attr, cmd.Start) }
	}
	if err := start(); err != nil {
		if cmd.Process != nil {
			// The hook failed after the fork: nothing may run that the
			// caller was told did not start.
			cmd.Process.Kill()
			cmd.Wait()
		}
		return nil, fmt.Errorf("starting %s: %w", path, err)
	}
	if cmd.Process == nil {
		return nil, fmt.Errorf("starting %s: the start hook returned without starting it", path)
	}
	return cmd.Process, nil
}

// SpawnAs is Spawn as the user uid:gid with supplementary groups (unless
// uid is 0), with extra files from descriptor 3 on. It is how a synced
// mount's host side runs for a caller: with exactly their rights.
func SpawnAs(path string, args []string, env []string, stdout, stderr *os.File, extra []*os.File, uid, gid int, groups []int, opts ...SpawnOption) (*os.Process, error) {
	attr := &syscall.SysProcAttr{Setsid: true}
	if uid != 0 {
		gs := make([]uint32, len(groups))
		for i, g := range groups {
			gs[i] = uint32(g)
		}
		attr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: gs}
	}
	return spawnWith("", path, args, env, stdout, stderr, extra, attr, opts)
}
