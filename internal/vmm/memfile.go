package vmm

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrUnsafeDir means a directory that must be this process's own and
// private (guest RAM, say) is not: another user made it, it is a link,
// or others may write or read it.
var ErrUnsafeDir = errors.New("unsafe directory")

// PrivateDir makes dir, mode 0700, owned by this process's user, or
// checks that an existing dir is exactly that: a real directory (not a
// symlink), this user's, and closed to group and others. Guest RAM lives
// in such a directory under /dev/shm, where any local user may create
// names first: a directory planted there would let its maker read every
// guest's memory or swap a RAM file for a link to a file the daemon may
// write.
//
// A directory that fails the check is moved aside when this process may
// (root may rename anyone's entry in the sticky /dev/shm), and a fresh
// one made; moved names where it went, for the caller to log. Otherwise
// the error is ErrUnsafeDir and says what to remove.
func PrivateDir(dir string) (moved string, err error) {
	if err := os.Mkdir(dir, 0o700); err == nil || !errors.Is(err, fs.ErrExist) {
		if err != nil {
			return "", fmt.Errorf("making %s: %w", dir, err)
		}
		return "", checkPrivateDir(dir) // umask cannot widen 0700, but the check is cheap
	}
	why := checkPrivateDir(dir)
	if why == nil {
		return "", nil
	}
	aside := dir + ".untrusted-" + randomHex(4)
	if err := os.Rename(dir, aside); err != nil {
		return "", fmt.Errorf("%w: remove it (rm -rf %s) and try again", why, dir)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return aside, fmt.Errorf("making %s after moving an untrusted one aside: %w", dir, err)
	}
	return aside, checkPrivateDir(dir)
}

// checkPrivateDir says why dir is not a private directory of this
// process's user, or nil when it is.
func checkPrivateDir(dir string) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("checking %s: %w", dir, err)
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return fmt.Errorf("%w: %s is a symbolic link, not banger's directory", ErrUnsafeDir, dir)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("%w: %s is not a directory", ErrUnsafeDir, dir)
	case int(st.Uid) != os.Geteuid():
		return fmt.Errorf("%w: %s belongs to uid %d, not to bangerd (uid %d): another user made it", ErrUnsafeDir, dir, st.Uid, os.Geteuid())
	case st.Mode&0o077 != 0:
		return fmt.Errorf("%w: %s has mode %04o: others may reach what is in it", ErrUnsafeDir, dir, st.Mode&0o7777)
	}
	return nil
}

// CreatePrivateFile makes path anew, mode 0600, in a PrivateDir: never
// through a symlink and never reusing a file that is already there
// (O_EXCL|O_NOFOLLOW), so what is opened is exactly the file made here.
// A leftover at path (a crashed VMM's RAM, say) is removed first; a
// symlink there is removed, not followed. moved is as for PrivateDir.
func CreatePrivateFile(path string) (f *os.File, moved string, err error) {
	moved, err = PrivateDir(filepath.Dir(path))
	if err != nil {
		return nil, moved, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, moved, fmt.Errorf("removing the old %s: %w", path, err)
	}
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, moved, fmt.Errorf("creating %s: %w", path, err)
	}
	return f, moved, nil
}

// openNoFollow opens an existing regular file for reading without
// following a symlink at its last component.
func openNoFollow(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%w: %s is a symbolic link: refusing to follow it", ErrUnsafeDir, path)
		}
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = fmt.Errorf("%w: %s is not a regular file", ErrUnsafeDir, path)
		}
		return nil, err
	}
	return f, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
