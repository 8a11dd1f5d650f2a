package guestinit

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"banger/internal/version"
	"banger/internal/vsockagent"
)

// stayPID1 runs the image's command (when the host asked for one) and
// remains init: it reaps every orphan, forwards SIGTERM, SIGINT and
// SIGHUP to the command, and powers off when the command ends if asked
// to, or on SIGTERM/SIGPWR when there is no command.
func stayPID1() error {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGPWR)

	spec, err := readRunSpec(dataDir + "/" + RunSpecPath)
	if err != nil {
		return err
	}
	// The agent serves beside the command, as its systemd unit would.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go vsockagent.Serve(ctx, version.Version, io.Discard)
	main := 0
	if spec != nil && len(spec.Argv()) > 0 {
		if main, err = startCommand(spec); err != nil {
			return err
		}
		logf("ready: running %q (pid %d)", strings.Join(spec.Argv(), " "), main)
	} else {
		logf("ready: no command to run")
	}

	for sig := range sigs {
		switch sig {
		case unix.SIGCHLD:
			for {
				var ws unix.WaitStatus
				pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
				if pid == main {
					logf("command exited: %s", describe(ws))
					main = 0
					if spec.PowerOffOnExit {
						return nil
					}
				}
			}
		case unix.SIGTERM, unix.SIGINT, unix.SIGHUP:
			if main != 0 {
				unix.Kill(main, sig.(syscall.Signal))
				continue
			}
			logf("%s: powering off", sig)
			return nil
		case unix.SIGPWR:
			logf("power button: powering off")
			return nil
		}
	}
	return nil
}

func describe(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return fmt.Sprintf("killed by %s (status %d)", ws.Signal(), 128+int(ws.Signal()))
	}
	return fmt.Sprintf("status %d", ws.ExitStatus())
}

// startCommand starts the image's command as its user, in its working
// directory, with its environment, its output on the console.
func startCommand(spec *RunSpec) (int, error) {
	argv := spec.Argv()
	uid, gid, home, err := lookupUser("", spec.User)
	if err != nil {
		return 0, err
	}
	env := append([]string{}, spec.Env...)
	if !hasKey(env, "PATH") {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	if !hasKey(env, "HOME") {
		env = append(env, "HOME="+home)
	}
	path, err := lookPath(argv[0], env)
	if err != nil {
		return 0, err
	}
	dir := spec.WorkingDir
	if dir == "" {
		dir = "/"
	}
	devnull, err := os.Open("/dev/null")
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	out := int(os.Stdout.Fd())
	if f, ok := console.(*os.File); ok {
		out = int(f.Fd())
	}
	attr := &syscall.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: []uintptr{devnull.Fd(), uintptr(out), uintptr(out)},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	}
	if uid != 0 || gid != 0 {
		attr.Sys.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	pid, err := syscall.ForkExec(path, argv, attr)
	if err != nil {
		return 0, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	return pid, nil
}

func hasKey(env []string, key string) bool {
	for _, e := range env {
		if strings.HasPrefix(e, key+"=") {
			return true
		}
	}
	return false
}

// lookPath finds a command on the command's own PATH.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := ""
	for _, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			path = e[5:]
		}
	}
	for _, dir := range strings.Split(path, ":") {
		p := dir + "/" + name
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("command %q not found in the image's PATH (%s)", name, path)
}
