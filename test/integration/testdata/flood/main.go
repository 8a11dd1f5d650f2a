// Command flood is a guest agent gone bad, for the integration test of
// a stuck guest (TestAgentStuckGuestCannotHangTheDaemon). Run inside a
// VM, it freezes the real agent, takes over the agent's virtio-serial
// port and writes ping frames into it without end, reading nothing: the
// host's answers pile up until its writes block.
//
// The agent cannot just be killed: in a busybox image it is PID 1 (the
// init stage), which ignores SIGSTOP and whose death panics the kernel.
// So every thread of the process holding the port is ptrace-seized and
// interrupted (a ptrace stop needs no signal), and the port's descriptor
// is copied out of it with pidfd_getfd: the port admits one opener.
package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// portName is vsockagent.SerialPortName.
const portName = "banger.agent"

func main() {
	// ptrace requests must come from the thread that seized the tracee.
	runtime.LockOSThread()
	// The exec that started this reports its exit over the very channel
	// about to be jammed: let it finish first.
	time.Sleep(time.Second)
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		os.Exit(1)
	}
}

func run() error {
	dev, err := port()
	if err != nil {
		return err
	}
	pid, fd, err := holder(dev)
	if err != nil {
		return err
	}
	if err := freeze(pid); err != nil {
		return err
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	mine, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return fmt.Errorf("pidfd_getfd %d/%d: %w", pid, fd, err)
	}
	f := os.NewFile(uintptr(mine), dev)
	var pings []byte
	for range 512 {
		pings = frame(pings, []byte(`{"proto":1}`))
	}
	for {
		if _, err := f.Write(pings); err != nil {
			time.Sleep(10 * time.Millisecond) // no host connected: wait for one
		}
	}
}

// frame appends a HELLO frame on stream 0 (docs/agent-protocol.md).
func frame(b, payload []byte) []byte {
	var h [10]byte
	h[0], h[1] = 0xb4, 0x01
	binary.BigEndian.PutUint32(h[6:], uint32(len(payload)))
	return append(append(b, h[:]...), payload...)
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
