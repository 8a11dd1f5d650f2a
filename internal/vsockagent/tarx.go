package vsockagent

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ExtractOptions say which of an archive's owners and mode bits
// ExtractTar applies beyond permissions, times and links. The zero value
// is the one for archives from a peer that is not trusted (a guest
// copying out to the host): files belong to whoever extracts them and
// lose their setuid and setgid bits.
type ExtractOptions struct {
	// Owners applies the entries' uid and gid; it needs root (CAP_CHOWN).
	Owners bool
	// SetID keeps setuid and setgid bits. With Owners, as root, that
	// lets the archive install setuid-root programs: set it only for an
	// archive from someone who could do that anyway.
	SetID bool
}

// ErrUnsafeEntry matches (errors.Is) every entry ExtractTar refuses for
// where it would write; errors.As an *EntryError says which and why.
var ErrUnsafeEntry = errors.New("unsafe copy entry")

// An EntryError is an archive entry ExtractTar refused: a name that is
// not a clean path inside the copied tree, a path through or onto a
// symlink, or a hard link to anything but a file the archive made. The
// copy stops at that entry.
type EntryError struct {
	Entry  string // the entry's name in the archive
	Reason string // what it would have done, e.g. "leaves the destination"
}

var _ error = (*EntryError)(nil)

func (e *EntryError) Error() string {
	return fmt.Sprintf("copy entry %q %s: refusing the copy", e.Entry, e.Reason)
}

// Is makes every EntryError match ErrUnsafeEntry.
func (e *EntryError) Is(target error) bool { return target == ErrUnsafeEntry }

// maxEntryName bounds an entry's name: Linux paths stop at 4096 bytes,
// and the checks below walk a name's components.
const maxEntryName = 4096

// ExtractTar writes a tar stream of one tree (as WriteTar makes) to dst,
// like `cp -a`: when dst is an existing directory the tree lands inside
// it under its own name, otherwise the tree's top entry becomes dst (and
// dst's missing parents are made). Permissions, the mtimes of files and
// directories, symlinks (stored, never followed) and hard links between
// the archive's files are kept; owners and setuid/setgid bits only as
// opts say. Devices, FIFOs and sockets are skipped.
//
// The archive may come from someone hostile: every write goes through an
// os.Root opened on the destination; the first entry must be the tree's
// top and every other one a clean path below it; an entry that passes
// through or lands on a symlink, or a hard link to anything but a regular
// file this archive made, stops the copy with an *EntryError. Modes,
// owners and times are set on open descriptors, not by path. A refused
// copy leaves what it wrote before the refusal.
func ExtractTar(r io.Reader, dst string, opts ExtractOptions) error {
	dst = filepath.Clean(dst)
	// dst is the user's own path: it may go through symlinks they made.
	parent, name := filepath.Dir(dst), filepath.Base(dst)
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		parent, name = dst, ""
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("copying to %s: %w", dst, err)
	}
	pr, err := os.OpenRoot(parent)
	if err != nil {
		return fmt.Errorf("copying to %s: %w", dst, err)
	}
	defer pr.Close()
	x := &extractor{opts: opts, parent: pr, name: name, dirs: map[string]bool{}, files: map[string]bool{}}
	defer x.close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the copy: %w", err)
		}
		if err := x.entry(h, tr); err != nil {
			return err
		}
	}
	return x.finish()
}

// extractor is one ExtractTar. The tree's top entry is made in parent
// (dst's parent, or dst when it is a directory); when it is a directory,
// everything else is made in tree, a Root on it, by its path below the
// top.
type extractor struct {
	opts   ExtractOptions
	parent *os.Root
	name   string   // the top entry's name in parent; "" keeps the archive's
	top    string   // the archive's name for its top entry, once seen
	tree   *os.Root // the top directory
	// dirs are the directories below tree known to be directories, not
	// symlinks: made by this archive or checked once.
	dirs map[string]bool
	// files are the regular files this archive made below tree: the
	// only things its hard links may point at.
	files map[string]bool
	// metas are the directories' modes, owners and times, set after
	// their contents: writing into a directory changes its mtime, and a
	// read-only one could not be written into.
	metas []dirMeta
}

type dirMeta struct {
	rel string // below tree; "." is the top
	h   *tar.Header
}

func (x *extractor) close() {
	if x.tree != nil {
		x.tree.Close()
	}
}

// entry makes one archive entry.
func (x *extractor) entry(h *tar.Header, body io.Reader) error {
	name := h.Name
	if h.Typeflag == tar.TypeDir {
		name = strings.TrimSuffix(name, "/")
	}
	if why := unclean(name); why != "" {
		return &EntryError{Entry: h.Name, Reason: why}
	}
	if x.top == "" {
		return x.topEntry(h, name, body)
	}
	rel, ok := strings.CutPrefix(name, x.top+"/")
	if !ok {
		return &EntryError{Entry: h.Name, Reason: fmt.Sprintf("is outside the copied tree %q", x.top)}
	}
	if x.tree == nil {
		return &EntryError{Entry: h.Name, Reason: fmt.Sprintf("is below %q, which is not a directory", x.top)}
	}
	if err := x.checkDirs(h.Name, rel); err != nil {
		return err
	}
	return x.place(x.tree, rel, h, body)
}

// unclean says why name cannot be an entry's name, or "" when it can: a
// relative path that path.Clean leaves as it is and no component of
// which is "..". Names are refused rather than cleaned so that no check
// looks at one path while the write goes to another.
func unclean(name string) string {
	switch {
	case name == "":
		return "has an empty name"
	case len(name) > maxEntryName:
		return fmt.Sprintf("has a name longer than %d bytes", maxEntryName)
	case path.IsAbs(name):
		return "leaves the destination (an absolute path)"
	case name == ".." || strings.HasPrefix(name, "../") || strings.HasSuffix(name, "/..") || strings.Contains(name, "/../"):
		return "leaves the destination"
	case path.Clean(name) != name || name == ".":
		return "is not a clean path (empty or \".\" components)"
	}
	return ""
}

// topEntry makes the archive's first entry, the top of the tree, as
// x.name in parent, or under its own name when dst is a directory.
func (x *extractor) topEntry(h *tar.Header, name string, body io.Reader) error {
	if strings.Contains(name, "/") {
		return &EntryError{Entry: h.Name, Reason: "comes before the copied tree's top entry"}
	}
	x.top = name
	at := x.name
	if at == "" {
		at = name
	}
	switch h.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeSymlink, tar.TypeLink:
	default:
		return fmt.Errorf("copying %q: it is not a file, directory or symlink (tar type %q); only those are copied", h.Name, h.Typeflag)
	}
	if err := x.place(x.parent, at, h, body); err != nil || h.Typeflag != tar.TypeDir {
		return err
	}
	tree, err := x.parent.OpenRoot(at)
	if err != nil {
		return fmt.Errorf("copying entry %q: %w", h.Name, err)
	}
	x.tree = tree
	x.metas = append(x.metas, dirMeta{".", h})
	return nil
}

// checkDirs refuses an entry at rel (below tree) whose directories are
// not all real directories: a symlink there, made by the archive or
// already in dst, would carry the write somewhere else.
func (x *extractor) checkDirs(entry, rel string) error {
	for i := range len(rel) {
		if rel[i] != '/' || x.dirs[rel[:i]] {
			continue
		}
		dir := rel[:i]
		fi, err := x.tree.Lstat(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("copying entry %q: its directory %q is not in the copy: %w", entry, path.Join(x.top, dir), fs.ErrNotExist)
		case err != nil:
			return fmt.Errorf("copying entry %q: %w", entry, err)
		case fi.Mode()&fs.ModeSymlink != 0:
			return &EntryError{Entry: entry, Reason: fmt.Sprintf("goes through the symlink %q", path.Join(x.top, dir))}
		case !fi.IsDir():
			return fmt.Errorf("copying entry %q: %s is not a directory", entry, path.Join(x.top, dir))
		}
		x.dirs[dir] = true
	}
	return nil
}

// place makes the entry h as name in root, whose directories are
// checked. A directory entry reuses a directory already there (cp -a
// merges), and refuses a symlink; other entries replace what is there,
// except a directory. Nothing is ever written through a symlink.
func (x *extractor) place(root *os.Root, name string, h *tar.Header, body io.Reader) error {
	var target string
	switch h.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeSymlink:
	case tar.TypeLink:
		var err error
		if target, err = x.linkTarget(h, name); err != nil {
			return err
		}
	default:
		return nil // devices, FIFOs and sockets are not copied
	}
	fi, err := root.Lstat(name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("copying entry %q: %w", h.Name, err)
	}
	exists := err == nil
	if h.Typeflag == tar.TypeDir {
		switch {
		case !exists:
			if err := root.Mkdir(name, 0o700); err != nil {
				return fmt.Errorf("copying entry %q: %w", h.Name, err)
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			return &EntryError{Entry: h.Name, Reason: "lands on a symlink"}
		case !fi.IsDir():
			return fmt.Errorf("copying entry %q: a file that is not a directory is in the way; remove it or copy elsewhere", h.Name)
		}
		if root == x.tree {
			x.dirs[name] = true
			x.metas = append(x.metas, dirMeta{name, h})
		}
		return nil
	}
	if exists {
		if fi.IsDir() {
			return fmt.Errorf("copying entry %q: a directory is in the way; remove it or copy elsewhere", h.Name)
		}
		// Unlinking a symlink removes the link, not what it points at.
		if err := root.Remove(name); err != nil {
			return fmt.Errorf("copying entry %q: replacing what is there: %w", h.Name, err)
		}
		delete(x.files, name)
	}
	switch h.Typeflag {
	case tar.TypeReg:
		if err := x.file(root, name, h, body); err != nil {
			return fmt.Errorf("copying entry %q: %w", h.Name, err)
		}
	case tar.TypeSymlink:
		if err := root.Symlink(h.Linkname, name); err != nil {
			return fmt.Errorf("copying entry %q: %w", h.Name, err)
		}
		if x.opts.Owners {
			if err := root.Lchown(name, h.Uid, h.Gid); err != nil {
				return fmt.Errorf("copying entry %q: %w", h.Name, err)
			}
		}
		return nil
	case tar.TypeLink:
		if err := root.Link(target, name); err != nil {
			return fmt.Errorf("copying entry %q: %w", h.Name, err)
		}
	}
	if root == x.tree {
		x.files[name] = true
	}
	return nil
}

// linkTarget is the path below tree of the hard link h's target, to be
// made as name: it must be a regular file this archive made (and did
// not replace since), never a symlink or a file that was already there.
func (x *extractor) linkTarget(h *tar.Header, name string) (string, error) {
	target, ok := strings.CutPrefix(h.Linkname, x.top+"/")
	if !ok || unclean(h.Linkname) != "" || !x.files[target] || target == name || x.tree == nil {
		return "", &EntryError{Entry: h.Name, Reason: fmt.Sprintf("is a hard link to %q, which is not a file this copy made", h.Linkname)}
	}
	return target, nil
}

// file writes the regular file h as name in root (nothing is there)
// and sets its owner, mode and times through its descriptor.
func (x *extractor) file(root *os.Root, name string, h *tar.Header, body io.Reader) (err error) {
	// O_EXCL: never opens an existing file, or through a symlink.
	f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if _, err := io.Copy(f, body); err != nil {
		return err
	}
	return x.attrs(f, h)
}

// attrs sets f's owner (when asked), mode and times from h. The owner
// goes first: chown clears setuid and setgid bits.
func (x *extractor) attrs(f *os.File, h *tar.Header) error {
	if x.opts.Owners {
		if err := f.Chown(h.Uid, h.Gid); err != nil {
			return err
		}
	}
	mode := h.FileInfo().Mode()
	keep := fs.ModePerm | fs.ModeSticky
	if x.opts.SetID {
		keep |= fs.ModeSetuid | fs.ModeSetgid
	}
	if err := f.Chmod(mode & keep); err != nil {
		return err
	}
	return futimens(f, h.ModTime)
}

// finish sets the directories' owners, modes and times, deepest (last
// made) first so that a read-only directory is closed after its
// contents are set.
func (x *extractor) finish() error {
	for i := len(x.metas) - 1; i >= 0; i-- {
		m := x.metas[i]
		// Directories are never replaced once checked, so this opens
		// the one that was made or checked.
		f, err := x.tree.OpenFile(m.rel, os.O_RDONLY|syscall.O_DIRECTORY, 0)
		if err != nil {
			return fmt.Errorf("copying entry %q: %w", m.h.Name, err)
		}
		err = x.attrs(f, m.h)
		f.Close()
		if err != nil {
			return fmt.Errorf("copying entry %q: %w", m.h.Name, err)
		}
	}
	return nil
}

// futimens sets f's access and modification times to t through its
// descriptor: utimensat with a NULL path, as the C library's futimens
// (x/sys has no wrapper, and its Futimes goes through /proc by path).
func futimens(f *os.File, t time.Time) error {
	ts, err := unix.TimeToTimespec(t)
	if err != nil {
		return fmt.Errorf("setting the time %s: %w", t, err)
	}
	times := [2]unix.Timespec{ts, ts}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall6(unix.SYS_UTIMENSAT, fd, 0, uintptr(unsafe.Pointer(&times)), 0, 0, 0)
	}); err != nil {
		return err
	}
	if errno != 0 {
		return &os.PathError{Op: "futimens", Path: f.Name(), Err: errno}
	}
	return nil
}
