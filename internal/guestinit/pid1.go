package guestinit

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/version"
	"banger/internal/vsockagent"
)

// stayPID1 runs the image's command (when the host asked for one) and
// remains init: it reaps every orphan and forwards SIGHUP to the command.
// A shutdown request (Ctrl-Alt-Del, which arrives as SIGINT; the ACPI
// power button; SIGTERM or SIGPWR) stops every process, gently then
// firmly, and powers off. When the command ends the VM powers off too if
// the run spec asks for it.
func stayPID1() error {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGPWR)
	power := make(chan struct{}, 1)
	watchPowerButton(power)

	spec, err := readRunSpec(dataDir + "/" + RunSpecPath)
	if err != nil {
		return err
	}
	// The agent serves beside the command, as its systemd unit would.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agentReaper = vsockagent.NewReaper()
	go vsockagent.Serve(ctx, AgentOptions(spec, agentReaper), io.Discard)

	main := 0
	startCmd := func() error {
		if spec != nil && spec.WorkingDir != "" {
			// As Docker does: the working directory is made when the
			// image (or the VM's override) names one it lacks; execs
			// start there too.
			if err := os.MkdirAll(spec.WorkingDir, 0o755); err != nil {
				logf("working directory %s: %v", spec.WorkingDir, err)
			}
		}
		if spec == nil || len(spec.Argv()) == 0 {
			logf("ready: no command to run")
			return nil
		}
		var err error
		if main, err = startCommand(spec); err != nil {
			return err
		}
		logf("ready: running %q (pid %d)", strings.Join(spec.Argv(), " "), main)
		return nil
	}
	// banger.hold: the host snapshots this VM as a warm template the
	// moment it is ready, and the image's command must not have run in
	// it (every VM restored from it runs the command afresh, under its
	// own name). The host releases the hold through the agent.
	var held <-chan struct{}
	if cmdline, _ := os.ReadFile("/proc/cmdline"); ParseCmdline(string(cmdline)).Hold {
		held = released
		logf("holding the command until the host releases it")
	} else if err := startCmd(); err != nil {
		return err
	}

	for {
		select {
		case <-held:
			held = nil
			// A restored VM's identity may have brought its own spec.
			if spec, err = readRunSpec(dataDir + "/" + RunSpecPath); err != nil {
				return err
			}
			if err := startCmd(); err != nil {
				return err
			}
		case <-power:
			logf("power button: shutting down")
			shutdown(&main)
			return nil
		case sig := <-sigs:
			switch sig {
			case unix.SIGCHLD:
				if reap(&main) && spec.PowerOffOnExit {
					return nil
				}
			case unix.SIGHUP:
				if main != 0 {
					unix.Kill(main, unix.SIGHUP)
				}
			default:
				logf("%s: shutting down", sig)
				shutdown(&main)
				return nil
			}
		}
	}
}

// released is closed when the host releases a held command (see
// banger.hold).
var (
	released    = make(chan struct{})
	releaseOnce sync.Once
)

func release() { releaseOnce.Do(func() { close(released) }) }

// agentReaper passes the agent's children's statuses on: as PID 1 this
// process reaps every child, the agent's included.
var agentReaper *vsockagent.Reaper

// AgentOptions are the agent's options for a VM whose run spec is spec
// (nil: none): the image's environment and directory are exec's
// defaults.
func AgentOptions(spec *RunSpec, reaper *vsockagent.Reaper) vsockagent.Options {
	o := vsockagent.Options{Version: version.Version, Reaper: reaper, DataDir: dataDir, Reidentify: reidentify, Release: release}
	if spec != nil {
		o.Env, o.Dir, o.Image = spec.Env, spec.WorkingDir, spec.Image
	}
	return o
}

// ReadAgentRunSpec reads the VM's run spec where it is after the root
// switch, for the agent service systemd starts.
func ReadAgentRunSpec() *RunSpec {
	spec, _ := readRunSpec(dataDir + "/" + RunSpecPath)
	return spec
}

// reap collects every exited child and reports whether the command was
// among them.
func reap(main *int) bool {
	ended := false
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return ended
		}
		if agentReaper != nil && agentReaper.Reaped(pid, ws) {
			continue // one of the agent's commands: its status is the agent's
		}
		if pid == *main {
			logf("command exited: %s", describe(ws))
			*main = 0
			ended = true
		}
	}
}

// shutdown asks every process to stop, waits up to 5 s for the command,
// then kills what is left. The caller powers off.
func shutdown(main *int) {
	unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for *main != 0 && time.Now().Before(deadline) {
		reap(main)
		time.Sleep(20 * time.Millisecond)
	}
	unix.Kill(-1, unix.SIGKILL)
	reap(main)
}

// watchPowerButton signals power when any input device reports the
// power key (the ACPI power button QEMU's system_powerdown presses). A
// press reaches only devices someone holds open, so it first waits (up
// to a second) until every input device the kernel registered, which
// sysfs lists at once, has its /dev node open; only then may the VM say
// it is ready. It keeps looking for new devices for 30 seconds.
func watchPowerButton(power chan<- struct{}) {
	watching := map[string]bool{}
	scan := func() {
		devs, _ := filepath.Glob("/dev/input/event*")
		for _, d := range devs {
			if !watching[d] {
				watching[d] = true
				if f, err := os.Open(d); err == nil {
					go watchInput(f, power)
				}
			}
		}
	}
	registered, _ := filepath.Glob("/sys/class/input/event*")
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		scan()
		if len(watching) >= len(registered) {
			break
		}
	}
	go func() {
		for i := 0; i < 120; i++ {
			time.Sleep(250 * time.Millisecond)
			scan()
		}
	}()
}

func watchInput(f *os.File, power chan<- struct{}) {
	defer f.Close()
	ev := make([]byte, 24) // struct input_event on 64-bit
	for {
		if _, err := io.ReadFull(f, ev); err != nil {
			return
		}
		typ, code := binary.NativeEndian.Uint16(ev[16:]), binary.NativeEndian.Uint16(ev[18:])
		value := int32(binary.NativeEndian.Uint32(ev[20:]))
		if typ == evKey && code == keyPower && value == 1 {
			select {
			case power <- struct{}{}:
			default:
			}
		}
	}
}

// From linux/input-event-codes.h.
const (
	evKey    = 0x01
	keyPower = 116
)

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
	uid, gid, home, err := vsockagent.LookupUser("", spec.User)
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
		return 0, fmt.Errorf("starting %s in %s: %w", argv[0], dir, err)
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
