package fswatch

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// next waits for the event matching name and op, failing after 5 s.
func next(t *testing.T, w *Watcher, name string, op Op) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("watcher ended (%v) before %s %s", w.Err(), op, name)
			}
			if ev.Name == name && ev.Op == op {
				return
			}
		case <-timeout:
			t.Fatalf("no %s event for %s", op, name)
		}
	}
}

func TestRecursiveWatchFollowsNewDirectories(t *testing.T) {
	root := t.TempDir()
	w, err := New(root, Options{Recursive: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	os.Mkdir(filepath.Join(root, "sub"), 0o755)
	next(t, w, "sub", Create)
	os.WriteFile(filepath.Join(root, "sub", "f"), []byte("x"), 0o644)
	next(t, w, "sub/f", Create)
	next(t, w, "sub/f", Write)
	os.Rename(filepath.Join(root, "sub", "f"), filepath.Join(root, "g"))
	next(t, w, "sub/f", Rename)
	next(t, w, "g", Create)
	os.Chmod(filepath.Join(root, "g"), 0o600)
	next(t, w, "g", Chmod)
	os.Remove(filepath.Join(root, "g"))
	next(t, w, "g", Remove)
	os.RemoveAll(root)
	for range w.Events() {
	}
	if err := w.Err(); err == nil {
		t.Error("the root's removal did not end the watch with an error")
	}
}

func TestFlatWatchIgnoresSubdirectories(t *testing.T) {
	root := t.TempDir()
	w, err := New(root, Options{Skip: func(b string) bool { return b == "skipped" }})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	os.Mkdir(filepath.Join(root, "sub"), 0o755)
	next(t, w, "sub", Create)
	os.WriteFile(filepath.Join(root, "sub", "inner"), nil, 0o644)
	os.WriteFile(filepath.Join(root, "skipped"), nil, 0o644)
	os.WriteFile(filepath.Join(root, "top"), nil, 0o644)
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev := <-w.Events():
			if ev.Name == "sub/inner" || ev.Name == "skipped" {
				t.Fatalf("unwanted event %+v", ev)
			}
			if ev.Name == "top" {
				return
			}
		case <-timeout:
			t.Fatal("no event for top")
		}
	}
}

func TestMissingRoot(t *testing.T) {
	if _, err := New(filepath.Join(t.TempDir(), "nope"), Options{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("watch of a missing root = %v", err)
	}
}
