// Package agentport takes a guest agent's channel away from it, for the
// integration tests' misbehaving agents (testdata/flood, testdata/liar),
// run inside a VM as root.
//
// The agent cannot just be killed: in a busybox image it is PID 1 (the
// init stage), which ignores SIGSTOP and whose death panics the kernel.
// So every thread of the process holding the port is ptrace-seized and
// interrupted (a ptrace stop needs no signal), and the port's descriptor
// is copied out of it with pidfd_getfd: the port admits one opener. The
// agent stays frozen while the caller runs.
package agentport

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// portName is vsockagent.SerialPortName.
const portName = "banger.agent"

// Steal freezes the agent and returns its virtio-serial port. The caller
// must have locked its goroutine to its thread (runtime.LockOSThread):
// ptrace requests come from the thread that seized the tracee.
func Steal() (*os.File, error) {
	dev, err := port()
	if err != nil {
		return nil, err
	}
	pid, fd, err := holder(dev)
	if err != nil {
		return nil, err
	}
	if err := freeze(pid); err != nil {
		return nil, err
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	mine, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_getfd %d/%d: %w", pid, fd, err)
	}
	return os.NewFile(uintptr(mine), dev), nil
}

// port is the agent's virtio-serial device, found as the agent finds it.
func port() (string, error) {
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, p := range names {
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == portName {
			return "/dev/" + filepath.Base(filepath.Dir(p)), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %s", portName)
}

// holder finds the process that has dev open, and its descriptor.
func holder(dev string) (pid, fd int, err error) {
	links, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, l := range links {
		if target, err := os.Readlink(l); err != nil || target != dev {
			continue
		}
		parts := strings.Split(l, "/") // "", proc, PID, fd, N
		pid, _ = strconv.Atoi(parts[2])
		fd, _ = strconv.Atoi(parts[4])
		if pid != os.Getpid() {
			return pid, fd, nil
		}
	}
	return 0, 0, fmt.Errorf("no process has %s open", dev)
}

// freeze ptrace-stops every thread of pid, until a pass over its tasks
// finds none new (a thread may have started one before it stopped).
func freeze(pid int) error {
	seized := map[int]bool{}
	for {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return err
		}
		fresh := 0
		for _, t := range tasks {
			tid, _ := strconv.Atoi(t.Name())
			if seized[tid] {
				continue
			}
			if err := unix.PtraceSeize(tid); err != nil {
				continue // it exited meanwhile
			}
			if err := unix.PtraceInterrupt(tid); err != nil {
				return fmt.Errorf("interrupting thread %d of %d: %w", tid, pid, err)
			}
			seized[tid] = true
			fresh++
		}
		if fresh == 0 {
			if len(seized) == 0 {
				return fmt.Errorf("could not seize any thread of %d", pid)
			}
			return nil
		}
	}
}
