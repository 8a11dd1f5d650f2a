package filesync

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Debouncing: a batch of changed paths goes out when the tree has been
// quiet for settle, or maxWait after its first change, so an editor's
// save (write, rename, chmod) is one batch and a long build still
// streams.
const (
	settle  = 2 * time.Millisecond
	maxWait = 50 * time.Millisecond
)

const watchMask = unix.IN_CREATE | unix.IN_CLOSE_WRITE | unix.IN_ATTRIB | unix.IN_MODIFY |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE | unix.IN_DELETE_SELF |
	unix.IN_ONLYDIR | unix.IN_DONT_FOLLOW | unix.IN_EXCL_UNLINK

// rescan in a batch means the kernel dropped events: look at everything.
const rescan = ""

// watcher reports changed paths under root, recursively, in batches.
type watcher struct {
	root string
	f    *os.File
	raw  chan string
	out  chan []string

	mu    sync.Mutex
	dirs  map[int]string // watch descriptor → directory, relative
	wds   map[string]int
	err   error
	close sync.Once
}

func newWatcher(root string) (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w := &watcher{root: root, f: os.NewFile(uintptr(fd), "inotify"), raw: make(chan string, 4096),
		out: make(chan []string, 1), dirs: map[int]string{}, wds: map[string]int{}}
	if _, err := w.add(""); err != nil {
		w.f.Close()
		return nil, err
	}
	go w.read()
	go w.batch()
	return w, nil
}

// Batches delivers the changed paths; it is closed when the watcher
// fails or is closed (Err says which).
func (w *watcher) Batches() <-chan []string { return w.out }

func (w *watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *watcher) Close() { w.close.Do(func() { w.f.Close() }) }

// add watches rel and every directory under it and returns the paths
// under it (rel included unless it is the root): a new directory's
// content may have arrived before its watch.
func (w *watcher) add(rel string) ([]string, error) {
	var paths []string
	top := filepath.Join(w.root, rel)
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == top && rel == "" {
				return err
			}
			return nil
		}
		if strings.HasPrefix(d.Name(), tempPrefix) {
			return nil
		}
		r := ""
		if p != w.root {
			r = filepath.ToSlash(p[len(w.root)+1:])
			paths = append(paths, r)
		}
		if !d.IsDir() {
			return nil
		}
		wd, err := unix.InotifyAddWatch(int(w.f.Fd()), p, watchMask)
		switch {
		case errors.Is(err, unix.ENOSPC):
			return fmt.Errorf("watching %s: the kernel's inotify watch limit is reached (one per directory): raise it, e.g. `sysctl fs.inotify.max_user_watches=1048576`", w.root)
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
func (w *watcher) forget(rel string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for r, wd := range w.wds {
		if under(r, rel) {
			unix.InotifyRmWatch(int(w.f.Fd()), uint32(wd))
			delete(w.wds, r)
			delete(w.dirs, wd)
		}
	}
}

func (w *watcher) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

// read turns inotify events into paths on raw.
func (w *watcher) read() {
	defer close(w.raw)
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

func (w *watcher) event(wd int, mask uint32, name string) error {
	if mask&unix.IN_Q_OVERFLOW != 0 {
		w.raw <- rescan
		return nil
	}
	w.mu.Lock()
	dir, ok := w.dirs[wd]
	if mask&unix.IN_IGNORED != 0 {
		delete(w.dirs, wd)
		if w.wds[dir] == wd {
			delete(w.wds, dir)
		}
	}
	w.mu.Unlock()
	if !ok {
		return nil
	}
	if mask&unix.IN_DELETE_SELF != 0 {
		if dir == "" {
			return fmt.Errorf("the shared directory %s was removed", w.root)
		}
		return nil // its parent reports it
	}
	if name == "" || strings.HasPrefix(name, tempPrefix) {
		return nil
	}
	rel := name
	if dir != "" {
		rel = dir + "/" + name
	}
	switch {
	case mask&unix.IN_ISDIR != 0 && mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
		paths, err := w.add(rel)
		if err != nil {
			return err
		}
		for _, p := range paths {
			w.raw <- p
		}
		return nil
	case mask&unix.IN_ISDIR != 0 && mask&unix.IN_MOVED_FROM != 0:
		w.forget(rel)
	}
	w.raw <- rel
	return nil
}

// batch collects raw paths into debounced, sorted, unique batches.
func (w *watcher) batch() {
	defer close(w.out)
	for {
		p, ok := <-w.raw
		if !ok {
			return
		}
		set := map[string]bool{p: true}
		deadline := time.NewTimer(maxWait)
		quiet := time.NewTimer(settle)
	collect:
		for {
			select {
			case p, ok := <-w.raw:
				if !ok {
					break collect
				}
				set[p] = true
				quiet.Reset(settle)
			case <-quiet.C:
				break collect
			case <-deadline.C:
				break collect
			}
		}
		deadline.Stop()
		quiet.Stop()
		out := make([]string, 0, len(set))
		for p := range set {
			out = append(out, p)
		}
		slices.Sort(out)
		w.out <- out
	}
}
