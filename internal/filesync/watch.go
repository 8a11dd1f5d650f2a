package filesync

import (
	"slices"
	"strings"
	"time"

	"banger/internal/fswatch"
)

// Debouncing: a batch of changed paths goes out when the tree has been
// quiet for settle, or maxWait after its first change, so an editor's
// save (write, rename, chmod) is one batch and a long build still
// streams.
const (
	settle  = 2 * time.Millisecond
	maxWait = 50 * time.Millisecond
)

// rescan in a batch means the kernel dropped events: look at everything.
const rescan = ""

// watcher reports changed paths under root, recursively, in batches.
type watcher struct {
	fw  *fswatch.Watcher
	out chan []string
}

func newWatcher(root string) (*watcher, error) {
	fw, err := fswatch.New(root, fswatch.Options{Recursive: true, Skip: func(base string) bool { return strings.HasPrefix(base, tempPrefix) }})
	if err != nil {
		return nil, err
	}
	w := &watcher{fw: fw, out: make(chan []string, 1)}
	go w.batch()
	return w, nil
}

// Batches delivers the changed paths; it is closed when the watcher
// fails or is closed (Err says which).
func (w *watcher) Batches() <-chan []string { return w.out }

func (w *watcher) Err() error { return w.fw.Err() }

func (w *watcher) Close() { w.fw.Close() }

// changed is the changed path an event names (rescan for an overflow).
func changed(ev fswatch.Event) string {
	if ev.Op == fswatch.Overflow {
		return rescan
	}
	return ev.Name
}

// batch collects raw paths into debounced, sorted, unique batches.
func (w *watcher) batch() {
	defer close(w.out)
	for {
		ev, ok := <-w.fw.Events()
		if !ok {
			return
		}
		set := map[string]bool{changed(ev): true}
		deadline := time.NewTimer(maxWait)
		quiet := time.NewTimer(settle)
	collect:
		for {
			select {
			case ev, ok := <-w.fw.Events():
				if !ok {
					break collect
				}
				set[changed(ev)] = true
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
