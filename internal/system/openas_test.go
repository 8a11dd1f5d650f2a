package system_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"banger/internal/system"
	"banger/internal/testenv"
)

// TestOpenAs checks the kernel's own permission checks, made as the
// caller: parent directories count, a file readable through a
// supplementary group opens, and no thread is left with the caller's
// identity afterwards.
func TestOpenAs(t *testing.T) {
	testenv.RequireRoot(t)
	const nobody, group = 65534, 4242
	// Not t.TempDir: its parent is closed to others.
	base, err := os.MkdirTemp("", "openas-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	mk := func(rel string, mode os.FileMode, uid, gid int) string {
		p := filepath.Join(base, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(rel), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		os.Chown(p, uid, gid)
		return p
	}
	open := mk("open/f", 0o644, 0, 0)
	mine := mk("mine/f", 0o600, nobody, nobody)
	rootOnly := mk("rootonly/f", 0o600, 0, 0)
	// World-readable, but in a directory nobody may not search: a
	// mode-bit test of the file alone lets it through.
	hidden := mk("closed/inner/f", 0o644, 0, 0)
	os.Chmod(filepath.Join(base, "closed"), 0o700)
	viaGroup := mk("group/f", 0o640, 0, group)

	caller := system.Cred{UID: nobody, GID: nobody}
	for _, tc := range []struct {
		name string
		c    system.Cred
		path string
		ok   bool
	}{
		{"world-readable", caller, open, true},
		{"the caller's own 0600 file", caller, mine, true},
		{"root's 0600 file", caller, rootOnly, false},
		{"readable file in a closed directory", caller, hidden, false},
		{"group file without the group", caller, viaGroup, false},
		{"group file through a supplementary group", system.Cred{UID: nobody, GID: nobody, Groups: []int{group}}, viaGroup, true},
		{"root itself", system.Cred{}, rootOnly, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := system.OpenAs(tc.c, tc.path)
			if tc.ok {
				if err != nil {
					t.Fatalf("OpenAs: %v", err)
				}
				f.Close()
				return
			}
			if !errors.Is(err, fs.ErrPermission) {
				if f != nil {
					f.Close()
				}
				t.Fatalf("OpenAs = %v, want a permission error", err)
			}
		})
	}

	// Every thread is root again: many goroutines at once, spread over
	// the runtime's threads, still read root's file.
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := 0; i < 100; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if f, err := system.OpenAs(caller, rootOnly); err == nil {
				f.Close()
				errs <- errors.New("the caller opened root's file")
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := os.ReadFile(rootOnly); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
