package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// StartIn runs start, which must start exactly one process with attr as
// its SysProcAttr (cmd.Start, with cmd.SysProcAttr == attr), so that the
// process is in group name from its first instruction: every thread it
// makes and every page it touches is counted and limited, and it never
// runs outside the group. Group name must exist (Create).
//
// On v2 the process is cloned straight into the group
// (CLONE_INTO_CGROUP, Linux 5.7 or later): StartIn sets
// attr.UseCgroupFD and attr.CgroupFD while start runs and clears them
// after.
//
// v1 has no such flag, and Go runs no code of ours in the child between
// fork and exec, where C programs write the child's pid to cgroup.procs.
// So StartIn moves the thread that forks instead: it runs start on a
// goroutine locked to its OS thread, writes that thread's id to the
// group's tasks file in every hierarchy (v1 places threads, not only
// processes), so the child inherits the thread's groups, and moves the
// thread back to its own groups before it returns. (Threads the runtime
// needs meanwhile are made by its template thread, not cloned from a
// locked one.) Should the move back fail, the thread stays locked and
// the runtime retires it when the goroutine ends. Moving back is not
// optional: a retired thread is ended, except the main thread, which
// is parked forever, so a goroutine that happened to run there would
// leave the daemon's main thread in the VM's group. The alternatives
// were worse: start then Add leaves the process running uncontained for
// a while, making threads and touching memory that stays charged
// outside the group; a trampoline that waits for Add before it execs
// the VMM costs a helper binary and an extra exec.
//
// On v1 start runs on another goroutine, so it must not depend on the
// caller's thread (namespaces, LockOSThread), and attr.Pdeathsig, which
// the kernel ties to the forking thread, is best left unset (VMMs
// outlive the daemon anyway). A panic in start is raised again in the
// caller.
func (m *Manager) StartIn(name string, attr *syscall.SysProcAttr, start func() error) error {
	if err := m.Check(); err != nil {
		return err
	}
	if err := validName("cgroup", name); err != nil {
		return err
	}
	if attr == nil {
		return errors.New("starting a process in a cgroup: attr is nil: pass the SysProcAttr start uses")
	}
	if m.h.mode == V2 {
		return m.startV2(name, attr, start)
	}
	return m.startV1(name, start)
}

func (m *Manager) startV2(name string, attr *syscall.SysProcAttr, start func() error) error {
	d := m.dir("", name)
	// Not O_PATH: clone3 does not accept an O_PATH descriptor.
	f, err := os.OpenFile(d, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return m.groupErr(name, fmt.Errorf("opening cgroup %s: %w", name, err))
	}
	defer f.Close()
	attr.UseCgroupFD, attr.CgroupFD = true, int(f.Fd())
	defer func() { attr.UseCgroupFD, attr.CgroupFD = false, 0 }()
	return start()
}

func (m *Manager) startV1(name string, start func() error) error {
	type result struct {
		err      error
		panicked any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		var r result
		tid := strconv.Itoa(unix.Gettid())
		var home []string // the thread's own groups, for each hierarchy it left
		defer func() {
			if p := recover(); p != nil {
				r.panicked = p
			}
			back := true
			for _, d := range home {
				if err := writeFile(filepath.Join(d, "tasks"), tid); err != nil {
					back = false
				}
			}
			if back {
				runtime.UnlockOSThread()
			} // else the thread stays locked, and is retired (see StartIn)
			done <- r
		}()
		from, err := m.threadHome()
		if err != nil {
			r.err = err
			return
		}
		for i, d := range m.dirs(name) {
			if err := writeFile(filepath.Join(d, "tasks"), tid); err != nil {
				r.err = m.groupErr(name, fmt.Errorf("placing the starting thread in cgroup %s: %w", name, err))
				return
			}
			home = append(home, from[i])
		}
		r.err = start()
	}()
	r := <-done
	if r.panicked != nil {
		panic(r.panicked)
	}
	return r.err
}

// threadHome returns the calling thread's own v1 groups, parallel to
// m.bases(): where StartIn moves it back to.
func (m *Manager) threadHome() ([]string, error) {
	b, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("reading this thread's cgroups: %w", err)
	}
	var home []string
	for _, base := range m.bases() {
		dir := ""
		for line := range strings.Lines(string(b)) {
			// "N:memory:/path", "N:cpu,cpuacct:/path"
			parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
			if len(parts) != 3 || !slices.ContainsFunc(strings.Split(parts[1], ","), func(c string) bool { return m.h.v1[c] == base }) {
				continue
			}
			// The path is from the hierarchy's root (or the cgroup
			// namespace's); the mount shows the cgroup m.h.v1root[base].
			rel, ok := strings.CutPrefix(parts[2], strings.TrimSuffix(m.h.v1root[base], "/"))
			if ok && (rel == "" || strings.HasPrefix(rel, "/")) {
				dir = filepath.Join(base, rel)
			}
		}
		if dir == "" || !exists(dir) {
			return nil, fmt.Errorf("finding this thread's own cgroup under %s in %q: it is not visible there, so a thread moved out could not return", base, b)
		}
		home = append(home, dir)
	}
	return home, nil
}
