package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/testenv"
)

// TestPrivateDir: guest RAM's directory is made 0700, kept when it is
// already exactly that, and anything else at its name (another user's
// directory, one open to others, a symlink) is never used.
func TestPrivateDir(t *testing.T) {
	testenv.RequireRoot(t) // the planted directories belong to another user
	shm := t.TempDir()
	os.Chmod(shm, 0o1777) // like /dev/shm
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("root only"), 0o600)

	plant := map[string]func(p string){
		"another user's directory": func(p string) { os.Mkdir(p, 0o700); os.Chown(p, 65534, 65534) },
		"root's, open to others":   func(p string) { os.Mkdir(p, 0o777); os.Chmod(p, 0o777) },
		"a symlink to a directory": func(p string) { os.Symlink(filepath.Dir(secret), p) },
		"a file":                   func(p string) { os.WriteFile(p, nil, 0o644) },
	}
	for name, mk := range plant {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(shm, "banger-"+strings.ReplaceAll(name, " ", "-"))
			mk(dir)
			moved, err := PrivateDir(dir)
			if err != nil {
				t.Fatalf("PrivateDir: %v", err)
			}
			if moved == "" || !strings.HasPrefix(moved, dir+".untrusted-") {
				t.Errorf("moved = %q, want the planted entry moved aside", moved)
			}
			if err := checkPrivateDir(dir); err != nil {
				t.Errorf("after PrivateDir: %v", err)
			}
			if _, err := os.Lstat(moved); err != nil {
				t.Errorf("the planted entry is not where PrivateDir said: %v", err)
			}
		})
	}

	t.Run("ours already", func(t *testing.T) {
		dir := filepath.Join(shm, "banger-ours")
		if moved, err := PrivateDir(dir); err != nil || moved != "" {
			t.Fatalf("first PrivateDir = %q, %v", moved, err)
		}
		os.WriteFile(filepath.Join(dir, "vm.ram"), []byte("live"), 0o600)
		if moved, err := PrivateDir(dir); err != nil || moved != "" {
			t.Fatalf("second PrivateDir = %q, %v: a running VM's RAM directory must stay", moved, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "vm.ram")); err != nil {
			t.Error(err)
		}
	})

	t.Run("RAM file swapped for a link", func(t *testing.T) {
		dir := filepath.Join(shm, "banger-link")
		PrivateDir(dir)
		ram := filepath.Join(dir, "vm.ram")
		os.Symlink(secret, ram)
		f, _, err := CreatePrivateFile(ram)
		if err != nil {
			t.Fatalf("CreatePrivateFile: %v", err)
		}
		f.WriteString("guest memory")
		f.Close()
		if b, _ := os.ReadFile(secret); string(b) != "root only" {
			t.Errorf("the link's target was written: %q", b)
		}
		if fi, err := os.Lstat(ram); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
			t.Errorf("RAM file = %v, %v; want a new 0600 file", fi, err)
		}
		// A copy (a snapshot of the RAM) never follows a link either.
		os.Remove(ram)
		os.Symlink(secret, ram)
		if _, err := CopyFile(filepath.Join(t.TempDir(), "snap"), ram); !errors.Is(err, ErrUnsafeDir) {
			t.Errorf("CopyFile of a symlinked RAM file: err = %v, want ErrUnsafeDir", err)
		}
	})
}
