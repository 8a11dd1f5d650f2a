package system

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// Cred is a user's identity for file access: who a daemon running as
// root acts for.
type Cred struct {
	UID, GID int
	Groups   []int // supplementary groups
}

// ErrNotAsCaller means a file could not be opened with a caller's
// identity: this process may not take it on (it is not root).
var ErrNotAsCaller = errors.New("cannot act as the caller")

// OpenAs opens path read-only with c's file-system identity: the kernel
// checks every directory on the way and the file itself against c, in
// the same step as the open, so there is no window between a check and
// the use (a mode-bit test before an open as root has one, and misses
// parent directories and ACLs). The result is an ordinary descriptor
// the caller reads as usual.
//
// It switches one locked OS thread's fsuid, fsgid and supplementary
// groups (all per-thread on Linux when set with raw system calls; Go's
// syscall.Setgroups would change every thread), opens, and switches
// back. A thread that cannot be switched back is never unlocked, so the
// runtime retires it with the goroutine instead of reusing it.
//
// When c is this process's own user, path is opened plainly. A process
// that is not root cannot take on another identity: ErrNotAsCaller.
func OpenAs(c Cred, path string) (*os.File, error) {
	if c.UID == os.Geteuid() {
		return os.Open(path)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: opening %s for uid %d needs bangerd to run as root", ErrNotAsCaller, path, c.UID)
	}
	type result struct {
		f   *os.File
		err error
	}
	groups := processGroups()
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		f, err := openOnThreadAs(c, path)
		if restoreRoot(groups) {
			runtime.UnlockOSThread()
		}
		done <- result{f, err}
	}()
	r := <-done
	return r.f, r.err
}

// openOnThreadAs takes on c on the current (locked) thread and opens path.
func openOnThreadAs(c Cred, path string) (*os.File, error) {
	groups := c.Groups
	if groups == nil {
		groups = []int{}
	}
	if err := unix.Setgroups(groups); err != nil {
		return nil, fmt.Errorf("%w: setting groups: %v", ErrNotAsCaller, err)
	}
	unix.SetfsgidRetGid(c.GID)
	unix.SetfsuidRetUid(c.UID)
	// setfsuid reports failure only by not changing: read the value back.
	if cur, _ := unix.SetfsuidRetUid(-1); cur != c.UID {
		return nil, fmt.Errorf("%w: fsuid is %d, not %d", ErrNotAsCaller, cur, c.UID)
	}
	if cur, _ := unix.SetfsgidRetGid(-1); cur != c.GID {
		return nil, fmt.Errorf("%w: fsgid is %d, not %d", ErrNotAsCaller, cur, c.GID)
	}
	return os.Open(path)
}

// restoreRoot switches the thread back to root's file-system identity
// and to groups, reporting whether it did.
func restoreRoot(groups []int) bool {
	unix.SetfsuidRetUid(0)
	unix.SetfsgidRetGid(0)
	uid, _ := unix.SetfsuidRetUid(-1)
	gid, _ := unix.SetfsgidRetGid(-1)
	return unix.Setgroups(groups) == nil && uid == 0 && gid == 0
}

// processGroups are the supplementary groups the process has, read
// before any thread switches, which a switched thread returns to.
var processGroups = sync.OnceValue(func() []int {
	g, _ := unix.Getgroups()
	if g == nil {
		g = []int{}
	}
	return g
})
