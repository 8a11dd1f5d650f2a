package vsockagent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"banger/internal/fswatch"
)

// The file system ops serve E2B's filesystem service and /files: each
// names a path and a user. `~`, `~/…` and relative paths resolve
// against the user's home. The agent acts as root, as envd does, and
// gives what it creates (files, and every directory it makes on the
// way) to the user; it does not check the user's permissions.

// Entry describes one path (envd's EntryInfo).
type Entry struct {
	Name string `json:"name"`
	Path string `json:"path"`
	// Type is "file", "dir", "symlink" (a link whose target is missing)
	// or "other"; a symlink to a file or directory has its target's type
	// and SymlinkTarget set.
	Type string `json:"type"`
	Size int64  `json:"size"`
	// Mode is the permission bits; Permissions is Go's FileMode.String
	// of the whole mode ("drwxr-xr-x", "Lrwxrwxrwx").
	Mode          uint32 `json:"mode"`
	Permissions   string `json:"permissions"`
	Owner         string `json:"owner"`
	Group         string `json:"group"`
	MtimeNs       int64  `json:"mtime_ns"`
	SymlinkTarget string `json:"symlink_target,omitempty"`
}

// Entry types.
const (
	TypeFile    = "file"
	TypeDir     = "dir"
	TypeSymlink = "symlink"
	TypeOther   = "other"
)

// idNames names owners and groups for entries.
type idNames struct{ users, groups map[int]string }

func (a *Agent) idNames() idNames {
	return idNames{readIDNames(a.opts.Root, "passwd"), readIDNames(a.opts.Root, "group")}
}

func nameOr(m map[int]string, id uint32) string {
	if n, ok := m[int(id)]; ok {
		return n
	}
	return strconv.FormatUint(uint64(id), 10)
}

func typeOf(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return TypeFile
	case m.IsDir():
		return TypeDir
	case m&fs.ModeSymlink != 0:
		return TypeSymlink
	}
	return TypeOther
}

// entry describes path as Lstat sees it; a symlink gets its target's
// type and its resolved target.
func (n idNames) entry(path string) (Entry, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return Entry{}, err
	}
	e := Entry{Name: filepath.Base(path), Path: path, Type: typeOf(fi.Mode()), Size: fi.Size(),
		Mode: uint32(fi.Mode().Perm()), Permissions: fi.Mode().String(), MtimeNs: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.Owner, e.Group = nameOr(n.users, sys.Uid), nameOr(n.groups, sys.Gid)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		if target, err := filepath.EvalSymlinks(path); err == nil {
			e.SymlinkTarget = target
			if tfi, err := os.Stat(target); err == nil {
				e.Type = typeOf(tfi.Mode())
			}
		} else if raw, err := os.Readlink(path); err == nil {
			e.SymlinkTarget = raw
		}
	}
	return e, nil
}

// resolvePath makes p absolute: `~` and `~/…` and relative paths are
// the user's home's.
func resolvePath(home, p string) string {
	switch {
	case p == "~":
		p = home
	case strings.HasPrefix(p, "~/"):
		p = filepath.Join(home, p[2:])
	case !filepath.IsAbs(p):
		p = filepath.Join(home, p)
	}
	return filepath.Clean(p)
}

// sendJSON writes v as the stream's output and ends it with EXIT 0.
func sendJSON(st *Stream, v any) {
	if err := json.NewEncoder(st).Encode(v); err != nil {
		st.Fail(err)
		return
	}
	st.CloseWrite()
	st.SendExit(Exit{})
}

// fsOp serves stat, ls, mkdir, mv, rm, write, read and watch.
func (a *Agent) fsOp(st *Stream) {
	req := st.Req
	id, err := lookupIdentity(a.opts.Root, req.User)
	if err != nil {
		st.Fail(err)
		return
	}
	if req.Path == "" {
		st.Fail(agentErr(CodeInvalid, "%s: no path", req.Op))
		return
	}
	path := resolvePath(id.home, req.Path)
	names := a.idNames()
	var out any
	switch req.Op {
	case "stat":
		out, err = names.entry(path)
	case "ls":
		out, err = names.list(path, req.Depth)
	case "mkdir":
		out, err = names.mkdir(path, id)
	case "mv":
		if req.To == "" {
			err = agentErr(CodeInvalid, "mv: no destination")
			break
		}
		out, err = names.move(path, resolvePath(id.home, req.To), id)
	case "rm":
		if path == "/" {
			err = agentErr(CodeInvalid, "rm: refusing to remove /")
		} else if err = os.RemoveAll(path); err == nil {
			st.SendExit(Exit{})
			return
		}
	case "write":
		out, err = names.write(st, path, id)
	case "read":
		err = readFile(st, path)
		if err == nil {
			st.CloseWrite()
			st.SendExit(Exit{})
			return
		}
	case "watch":
		err = watch(st, path, req.Recursive)
		if err == nil {
			return
		}
	}
	if err != nil {
		st.Fail(coded(err))
		return
	}
	sendJSON(st, out)
}

// list lists dir (followed when a symlink) down to depth levels (1: its
// own entries), without following symlinks below it.
func (n idNames) list(dir string, depth int) ([]Entry, error) {
	if depth < 0 {
		return nil, agentErr(CodeInvalid, "ls: depth %d", depth)
	}
	if depth == 0 {
		depth = 1
	}
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(root)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, agentErr(CodeNotDir, "%s is not a directory", dir)
	}
	out := []Entry{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root {
				return err
			}
			return nil // unreadable or gone below the root: listed without its content
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		level := strings.Count(rel, string(filepath.Separator)) + 1
		e, err := n.entry(p)
		if err != nil {
			return nil
		}
		out = append(out, e)
		if d.IsDir() && level >= depth {
			return filepath.SkipDir
		}
		return nil
	})
	return out, err
}

// makeDirs makes dir and its missing parents, 0755 and owned by id,
// and reports whether it made any. A non-directory on the way is
// not_dir.
func makeDirs(dir string, id identity) (bool, error) {
	var missing []string
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return false, agentErr(CodeNotDir, "%s is in the way: it is not a directory", p)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
		missing = append(missing, p)
		if p == filepath.Dir(p) {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		p := missing[i]
		if err := os.Mkdir(p, 0o755); err != nil {
			if errors.Is(err, fs.ErrExist) {
				continue // made meanwhile: someone else's
			}
			return false, err
		}
		// The umask may have taken bits; Lchown: never through a link
		// swapped in since.
		if err := errors.Join(os.Chmod(p, 0o755), os.Lchown(p, id.uid, id.gid)); err != nil {
			return false, fmt.Errorf("giving %s to %s: %w", p, id.name, err)
		}
	}
	return len(missing) > 0, nil
}

func (n idNames) mkdir(dir string, id identity) (Entry, error) {
	made, err := makeDirs(dir, id)
	if err != nil {
		return Entry{}, err
	}
	if !made {
		return Entry{}, agentErr(CodeExists, "%s exists already", dir)
	}
	return n.entry(dir)
}

func (n idNames) move(from, to string, id identity) (Entry, error) {
	if _, err := os.Lstat(from); err != nil {
		return Entry{}, err
	}
	if _, err := makeDirs(filepath.Dir(to), id); err != nil {
		return Entry{}, err
	}
	if err := os.Rename(from, to); err != nil {
		return Entry{}, err
	}
	return n.entry(to)
}

// write replaces path's content with the stream's input, making the
// file and its parents the user's.
func (n idNames) write(st *Stream, path string, id identity) (Entry, error) {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return Entry{}, agentErr(CodeIsDir, "%s is a directory", path)
	}
	if _, err := makeDirs(filepath.Dir(path), id); err != nil {
		return Entry{}, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return Entry{}, err
	}
	if err := f.Chown(id.uid, id.gid); err != nil {
		f.Close()
		return Entry{}, fmt.Errorf("giving %s to %s: %w", path, id.name, err)
	}
	_, err = Copy(f, st)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Entry{}, fmt.Errorf("writing %s: %w", path, err)
	}
	return n.entry(path)
}

// readFile sends path's content.
func readFile(st *Stream, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return agentErr(CodeIsDir, "%s is a directory", path)
	}
	_, err = Copy(st, f)
	return err
}

// WatchEvent is one line of a watch's output: first {"op":"start"} once
// the watch is armed, then one per change, Name relative to the watched
// directory; {"op":"overflow"} when the kernel dropped events.
type WatchEvent struct {
	Name string `json:"name,omitempty"`
	Op   string `json:"op"`
}

// watch streams dir's changes as NDJSON WatchEvents until the host ends
// the stream (nil) or the watch fails.
func watch(st *Stream, dir string, recursive bool) error {
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(root); err != nil {
		return err
	} else if !fi.IsDir() {
		return agentErr(CodeNotDir, "%s is not a directory", dir)
	}
	w, err := fswatch.New(root, fswatch.Options{Recursive: recursive})
	if err != nil {
		return err
	}
	defer w.Close()
	go func() {
		<-st.Done()
		w.Close()
	}()
	enc := json.NewEncoder(st)
	if err := enc.Encode(WatchEvent{Op: "start"}); err != nil {
		return nil // the host is gone
	}
	for ev := range w.Events() {
		if ev.Op == fswatch.CloseWrite {
			continue // E2B knows writes only
		}
		if err := enc.Encode(WatchEvent{Name: ev.Name, Op: ev.Op.String()}); err != nil {
			return nil
		}
	}
	select {
	case <-st.Done():
		return nil
	default:
	}
	if err := w.Err(); err != nil {
		if errors.Is(err, fswatch.ErrRootRemoved) {
			return &AgentError{Code: CodeNotFound, Message: err.Error()}
		}
		return err
	}
	return nil
}
