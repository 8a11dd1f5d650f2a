// Package filesync keeps a host directory and a guest directory the
// same over one byte stream (the agent channel), for VMs whose VMM has
// no shared file system (Firecracker). Each side runs a Peer: it watches
// its tree with inotify and streams what changed, and applies what the
// other side streams.
//
// The first exchange is three-way: the guest sends what it has, the
// host compares that with its own tree and with the base (what both
// agreed on when they last talked, kept by the host), and each path
// goes the way it changed. After that, changes flow both ways as they
// happen. When both sides changed a path since they last agreed, the
// copy with the later modification time wins (the host on a tie), on
// both sides alike, and the conflict is logged. Nothing is followed
// through a symlink: links are copied as links, and a path whose parent
// is a link is refused.
//
// Files are compared by size and modification time (and, on one side,
// inode and change time), not by content: two writes of the same size
// within one tick of the clock, on the two sides at once, can leave the
// sides different until the next write. Directories' own times are not
// carried.
package filesync

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// Entry kinds.
const (
	KindFile = "f"
	KindDir  = "d"
	KindLink = "l"
)

// tempPrefix names the files a peer writes before renaming them into
// place; watchers and scans skip them.
const tempPrefix = ".banger-sync."

// Entry is one path of a tree as the sync compares it.
type Entry struct {
	Path   string `json:"p"` // slash-separated, relative to the root
	Kind   string `json:"k"`
	Mode   uint32 `json:"m,omitempty"` // permission bits
	Size   int64  `json:"s,omitempty"`
	Mtime  int64  `json:"t,omitempty"` // nanoseconds since the epoch
	Target string `json:"l,omitempty"` // a link's target

	// This side's inode and change time of the path: two writes of the
	// same size within one tick of the file system's clock keep the
	// modification time, but not the change time, or (an editor's
	// rename) the inode. Never sent.
	ino   uint64
	ctime int64
}

// unchanged reports whether b is a (this side's entry of a path)
// exactly as it was: same content, same inode and change time.
// A directory's change time moves with every entry made in it: only its
// inode counts.
func unchanged(a, b Entry) bool {
	return same(a, b) && a.ino == b.ino && (a.Kind == KindDir || a.ctime == b.ctime)
}

// body is how many bytes of content follow e's put: a file's size.
func (e Entry) body() int64 {
	if e.Kind == KindFile {
		return e.Size
	}
	return 0
}

// same reports whether two entries are the same content: a sync that
// copied one onto the other leaves them same (it sets the mtime too).
func same(a, b Entry) bool {
	if a.Kind != b.Kind {
		return false
	}
	switch a.Kind {
	case KindDir:
		return a.Mode == b.Mode
	case KindLink:
		return a.Target == b.Target
	}
	return a.Mode == b.Mode && a.Size == b.Size && a.Mtime == b.Mtime
}

// entryOf makes the entry of rel from its lstat; ok is false for what
// the sync does not carry (devices, fifos, sockets).
func entryOf(root, rel string, fi fs.FileInfo) (Entry, bool) {
	e := Entry{Path: rel, Mode: uint32(fi.Mode().Perm()), Mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.ino, e.ctime = st.Ino, st.Ctim.Nano()
	}
	switch {
	case fi.Mode().IsRegular():
		e.Kind, e.Size = KindFile, fi.Size()
	case fi.IsDir():
		e.Kind = KindDir
	case fi.Mode()&fs.ModeSymlink != 0:
		t, err := os.Readlink(filepath.Join(root, rel))
		if err != nil {
			return Entry{}, false
		}
		e.Kind, e.Target, e.Mode = KindLink, t, 0
	default:
		return Entry{}, false
	}
	return e, true
}

// lstat is rel's entry now; ok is false when nothing the sync carries is
// there.
func lstat(root, rel string) (Entry, bool) {
	fi, err := os.Lstat(filepath.Join(root, rel))
	if err != nil {
		return Entry{}, false
	}
	return entryOf(root, rel, fi)
}

// Scan lists root's tree (without root itself), .git and dot files
// included, links not followed.
func Scan(root string) (map[string]Entry, error) {
	out := map[string]Entry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root {
				return err
			}
			return nil // gone while walking: the watcher reports it
		}
		if p == root || strings.HasPrefix(d.Name(), tempPrefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		rel := filepath.ToSlash(p[len(root)+1:])
		if e, ok := entryOf(root, rel, fi); ok {
			out[rel] = e
		}
		return nil
	})
	return out, err
}

// errBadPath is a path from the other side that would leave the tree.
var errBadPath = errors.New("path outside the shared tree")

// checkRel refuses a path from the other side that is not a clean
// relative path inside the tree.
func checkRel(rel string) error {
	if rel == "" || rel != path.Clean(rel) || !filepath.IsLocal(rel) || strings.ContainsRune(rel, 0) {
		return fmt.Errorf("%w: %q", errBadPath, rel)
	}
	if strings.HasPrefix(path.Base(rel), tempPrefix) {
		return fmt.Errorf("%w: %q is a sync temporary name", errBadPath, rel)
	}
	return nil
}

// parentsReal makes rel's parent directories, refusing any that is a
// symlink or not a directory: what the other side sends lands in the
// tree, never through a link out of it.
func parentsReal(root, rel string) error {
	dir := root
	parts := strings.Split(rel, "/")
	for _, part := range parts[:len(parts)-1] {
		dir = filepath.Join(dir, part)
		fi, err := os.Lstat(dir)
		if errors.Is(err, fs.ErrNotExist) {
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory (a symlink is not followed)", dir)
		}
	}
	return nil
}

// under reports whether p is dir or inside it.
func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
