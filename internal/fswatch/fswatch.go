// Package fswatch watches a directory tree with inotify and reports what
// happened to which path, as typed events. It adds watches for
// directories that appear under a recursive watch, and reports what a
// new directory already held by the time its watch was armed. It does
// not debounce, batch or rescan: callers that need that (a synced
// mount, package filesync) build it on the events. Linux only; it
// depends on the standard library and x/sys alone, since the guest
// agent uses it.
package fswatch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Op is what happened to a path.
type Op uint8

// Ops. A rename reports Rename for the old name and Create for the new
// one (when both are watched), as fsnotify and E2B's envd do.
const (
	Create     Op = iota + 1 // created, or moved in
	Write                    // its content changed (IN_MODIFY)
	Remove                   // deleted
	Rename                   // moved away (its old name)
	Chmod                    // metadata: mode, owner, times (IN_ATTRIB)
	CloseWrite               // a writer closed it (IN_CLOSE_WRITE)
	Overflow                 // the kernel dropped events: look at everything
)

var opNames = [...]string{Create: "create", Write: "write", Remove: "remove", Rename: "rename", Chmod: "chmod", CloseWrite: "close_write", Overflow: "overflow"}

func (o Op) String() string {
	if int(o) < len(opNames) && opNames[o] != "" {
		return opNames[o]
	}
	return fmt.Sprintf("Op(%d)", o)
}

// Event is one change under the root.
type Event struct {
	// Name is the path relative to the root, slash-separated; "" for
	// Overflow.
	Name string
	Op   Op
	// Dir says the path is a directory (as the kernel reported it).
	Dir bool
}

// Options tune a watch.
type Options struct {
	// Recursive watches every directory under the root, and each new
	// one as it appears; otherwise only the root's own entries are
	// reported.
	Recursive bool
	// Skip, when set, hides paths whose base name it accepts: they get
	// no events and, when directories, no watches.
	Skip func(base string) bool
}

// ErrRootRemoved ends a watch whose root was deleted.
var ErrRootRemoved = errors.New("the watched directory was removed")

const mask = unix.IN_CREATE | unix.IN_CLOSE_WRITE | unix.IN_ATTRIB | unix.IN_MODIFY |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE | unix.IN_DELETE_SELF |
	unix.IN_ONLYDIR | unix.IN_DONT_FOLLOW | unix.IN_EXCL_UNLINK

// Watcher reports changes under a root until it is closed or fails.
type Watcher struct {
	root string
	opts Options
	f    *os.File
	out  chan Event

	mu    sync.Mutex
	dirs  map[int]string // watch descriptor → directory, relative
	wds   map[string]int
	err   error
	close sync.Once
}

// New arms a watch of root (a directory; a symlink to one is not
// followed: resolve it first). Its first watch is armed when New
// returns, so every later change is reported.
func New(root string, opts Options) (*Watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w := &Watcher{root: filepath.Clean(root), opts: opts, f: os.NewFile(uintptr(fd), "inotify"),
		out: make(chan Event, 4096), dirs: map[int]string{}, wds: map[string]int{}}
	if _, err := w.add(""); err != nil {
		w.f.Close()
		return nil, err
	}
	go w.read()
	return w, nil
}

// Events delivers changes in the order the kernel reported them. It is
// closed when the watcher fails or is closed (Err says which). A
// consumer that falls behind holds back the reader, and the kernel then
// drops events and reports Overflow.
func (w *Watcher) Events() <-chan Event { return w.out }

// Err is why Events was closed: nil after Close.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close stops the watch; Events is closed soon after. Safe to call more
// than once and concurrently.
func (w *Watcher) Close() { w.close.Do(func() { w.f.Close() }) }

// add watches rel (and, recursively, every directory under it) and
// returns the paths under rel, rel excluded: a new directory's content
// may have arrived before its watch.
func (w *Watcher) add(rel string) ([]string, error) {
	var paths []string
	top := filepath.Join(w.root, rel)
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == top && rel == "" {
				return err
			}
			return nil
		}
		if p != top && w.opts.Skip != nil && w.opts.Skip(d.Name()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		r := ""
		if p != w.root {
			r = filepath.ToSlash(p[len(w.root)+1:])
		}
		if p != top {
			paths = append(paths, r)
		}
		if !d.IsDir() {
			return nil
		}
		if p != w.root && !w.opts.Recursive {
			return filepath.SkipDir
		}
		wd, err := unix.InotifyAddWatch(int(w.f.Fd()), p, mask)
		switch {
		case errors.Is(err, unix.ENOSPC):
			return fmt.Errorf("watching %s: the kernel's inotify watch limit is reached (one per directory): raise it, e.g. `sysctl fs.inotify.max_user_watches=1048576`", w.root)
		case err != nil && p == w.root:
			return fmt.Errorf("watching %s: %w", w.root, err)
		case err != nil:
			return nil // gone or not a directory by now: its parent's event says so
		}
		w.mu.Lock()
		w.dirs[wd], w.wds[r] = r, wd
		w.mu.Unlock()
		return nil
	})
	return paths, err
}

// forget drops the watches of rel and everything under it (moved away).
func (w *Watcher) forget(rel string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for r, wd := range w.wds {
		if r == rel || strings.HasPrefix(r, rel+"/") {
			unix.InotifyRmWatch(int(w.f.Fd()), uint32(wd))
			delete(w.wds, r)
			delete(w.dirs, wd)
		}
	}
}

func (w *Watcher) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

// read turns inotify records into events until the watcher is closed.
func (w *Watcher) read() {
	defer close(w.out)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				w.fail(fmt.Errorf("reading inotify events: %w", err))
			}
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if err := w.event(int(ev.Wd), ev.Mask, name); err != nil {
				w.fail(err)
				return
			}
		}
	}
}

func (w *Watcher) event(wd int, m uint32, name string) error {
	if m&unix.IN_Q_OVERFLOW != 0 {
		w.out <- Event{Op: Overflow}
		return nil
	}
	w.mu.Lock()
	dir, ok := w.dirs[wd]
	if m&unix.IN_IGNORED != 0 {
		delete(w.dirs, wd)
		if w.wds[dir] == wd {
			delete(w.wds, dir)
		}
	}
	w.mu.Unlock()
	if !ok {
		return nil
	}
	if m&unix.IN_DELETE_SELF != 0 {
		if dir == "" {
			return fmt.Errorf("%w: %s", ErrRootRemoved, w.root)
		}
		return nil // its parent reports it
	}
	if name == "" || (w.opts.Skip != nil && w.opts.Skip(name)) {
		return nil
	}
	rel := name
	if dir != "" {
		rel = dir + "/" + name
	}
	isDir := m&unix.IN_ISDIR != 0
	switch {
	case m&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
		w.out <- Event{Name: rel, Op: Create, Dir: isDir}
		if isDir && w.opts.Recursive {
			paths, err := w.add(rel)
			if err != nil {
				return err
			}
			for _, p := range paths {
				w.out <- Event{Name: p, Op: Create}
			}
		}
	case m&unix.IN_MOVED_FROM != 0:
		if isDir {
			w.forget(rel)
		}
		w.out <- Event{Name: rel, Op: Rename, Dir: isDir}
	case m&unix.IN_DELETE != 0:
		w.out <- Event{Name: rel, Op: Remove, Dir: isDir}
	case m&unix.IN_MODIFY != 0:
		w.out <- Event{Name: rel, Op: Write, Dir: isDir}
	case m&unix.IN_CLOSE_WRITE != 0:
		w.out <- Event{Name: rel, Op: CloseWrite, Dir: isDir}
	case m&unix.IN_ATTRIB != 0:
		w.out <- Event{Name: rel, Op: Chmod, Dir: isDir}
	}
	return nil
}
