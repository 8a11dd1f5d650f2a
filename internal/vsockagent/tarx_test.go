package vsockagent

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/testenv"
)

// tarEntry is one entry of a test archive. "$BASE" in name or link is
// replaced by the test's base directory, so that a path outside the
// destination stays inside the test's own directory even when the
// extractor is wrong.
type tarEntry struct {
	typ        byte
	name, link string
	mode       int64
	body       string
	uid        int
}

func dirEntry(name string, mode int64) tarEntry {
	return tarEntry{typ: tar.TypeDir, name: name, mode: mode}
}
func fileEntry(name string, mode int64, body string) tarEntry {
	return tarEntry{typ: tar.TypeReg, name: name, mode: mode, body: body}
}
func symlinkEntry(name, target string) tarEntry {
	return tarEntry{typ: tar.TypeSymlink, name: name, link: target, mode: 0o777}
}
func linkEntry(name, target string) tarEntry {
	return tarEntry{typ: tar.TypeLink, name: name, link: target, mode: 0o644}
}

// makeTar writes entries as a tar stream, the way a hostile peer could.
func makeTar(tb testing.TB, base string, entries []tarEntry) []byte {
	tb.Helper()
	b, err := buildTar(base, entries)
	if err != nil {
		tb.Fatalf("writing the test archive: %v", err)
	}
	return b
}

func buildTar(base string, entries []tarEntry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Typeflag: e.typ,
			Name:     strings.ReplaceAll(e.name, "$BASE", base),
			Linkname: strings.ReplaceAll(e.link, "$BASE", base),
			Mode:     e.mode,
			Uid:      e.uid,
			Gid:      e.uid,
			ModTime:  time.Unix(1_500_000_000, 0),
		}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("%q: %w", e.name, err)
		}
		if _, err := tw.Write([]byte(e.body[:h.Size])); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// layout makes a base directory holding what a copy must not touch (a
// sentinel file, and a directory "outside" with a file) and returns it
// with the copy's destination base/dst, made first when into is set.
func layout(tb testing.TB, into bool) (base, dst string) {
	tb.Helper()
	base = tb.TempDir()
	dst = filepath.Join(base, "dst")
	must(tb, os.WriteFile(filepath.Join(base, "sentinel"), []byte("keep"), 0o644))
	must(tb, os.Mkdir(filepath.Join(base, "outside"), 0o755))
	must(tb, os.WriteFile(filepath.Join(base, "outside", "file"), []byte("outside"), 0o644))
	if into {
		must(tb, os.Mkdir(dst, 0o755))
	}
	return base, dst
}

func must(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

// fileState is what a test compares of a file: everything a copy could
// change through a bad path (mode, owner, times, links, content).
type fileState struct {
	mode          fs.FileMode
	uid, gid      uint32
	nlink         uint64
	mtime         time.Time
	content, link string
}

// describe maps every path under root ("." for root) to its state;
// skip (relative to root) is left out with everything below it.
// Directory sizes and link counts depend on the file system, so they
// are left out; symlinks' times are not copied, so are left out too.
func describe(tb testing.TB, root, skip string) map[string]fileState {
	tb.Helper()
	states := map[string]fileState{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == skip {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil // SkipDir on a file would skip its siblings
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		s := fileState{mode: fi.Mode(), uid: st.Uid, gid: st.Gid, mtime: fi.ModTime()}
		switch {
		case fi.Mode().IsRegular():
			s.nlink = uint64(st.Nlink)
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s.content = string(b)
		case fi.Mode()&fs.ModeSymlink != 0:
			s.mtime = time.Time{}
			if s.link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		states[rel] = s
		return nil
	})
	if err != nil {
		tb.Fatalf("describing %s: %v", root, err)
	}
	return states
}

// outside is the state of everything in base but dst. base's own mtime
// changes when dst is made, so it is left out.
func outside(tb testing.TB, base string) map[string]fileState {
	tb.Helper()
	states := describe(tb, base, "dst")
	s := states["."]
	s.mtime = time.Time{}
	states["."] = s
	return states
}

// diffStates reports how got differs from want, path by path.
func diffStates(tb testing.TB, what string, want, got map[string]fileState) {
	tb.Helper()
	for _, p := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[p]; !ok {
			tb.Errorf("%s: %s is gone", what, p)
		} else if g != want[p] {
			tb.Errorf("%s: %s changed:\n got %+v\nwant %+v", what, p, g, want[p])
		}
	}
	for _, p := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[p]; !ok {
			tb.Errorf("%s: %s appeared", what, p)
		}
	}
}

func extract(tb testing.TB, archive []byte, dst string, opts ExtractOptions) error {
	tb.Helper()
	return ExtractTar(bytes.NewReader(archive), dst, opts)
}

// hostileCases are archives a hostile peer could send; each must be
// refused without a change outside the destination. The fuzz test
// starts from them too.
var hostileCases = []struct {
	name    string
	entries []tarEntry
	// setup puts things in dst before the copy; such cases run only
	// into an existing dst.
	setup func(tb testing.TB, base, dst string)
	// absent are paths the copy must not have made, below dst and
	// below dst/x (where the top x lands in an existing dst).
	absent []string
}{
	{name: "dotdot after the top", entries: []tarEntry{dirEntry("x/", 0o755), fileEntry("x/../f", 0o644, "escaped")}},
	{name: "dotdot twice", entries: []tarEntry{dirEntry("x/", 0o755), fileEntry("x/../../f", 0o644, "escaped")}},
	{name: "dotdot first", entries: []tarEntry{fileEntry("../f", 0o644, "escaped")}},
	{name: "dotdot second", entries: []tarEntry{dirEntry("x/", 0o755), fileEntry("../f", 0o644, "escaped")}},
	{name: "absolute", entries: []tarEntry{dirEntry("x/", 0o755), fileEntry("$BASE/outside/abs", 0o644, "escaped")}},
	{name: "absolute first", entries: []tarEntry{fileEntry("$BASE/outside/abs", 0o644, "escaped")}},
	{name: "dot component", entries: []tarEntry{dirEntry("x/", 0o755), fileEntry("x/./y", 0o644, "y")}, absent: []string{"y", "x/y"}},
	{name: "empty component", entries: []tarEntry{dirEntry("x/", 0o755), fileEntry("x//y", 0o644, "y")}, absent: []string{"y", "x/y"}},
	{name: "dot top", entries: []tarEntry{dirEntry("./", 0o777), fileEntry("./f", 0o644, "f")}},
	{name: "second top", entries: []tarEntry{dirEntry("x/", 0o755), fileEntry("y", 0o644, "y")}, absent: []string{"y"}},
	{name: "below a file top", entries: []tarEntry{fileEntry("x", 0o644, "x"), fileEntry("x/y", 0o644, "y")}},
	{name: "dir through own symlink up", entries: []tarEntry{
		dirEntry("x/", 0o755), symlinkEntry("x/l", ".."), dirEntry("x/l/", 0o777), fileEntry("x/l/f", 0o644, "escaped")}},
	{name: "dir through own symlink up twice", entries: []tarEntry{
		dirEntry("x/", 0o755), symlinkEntry("x/l", "../.."), dirEntry("x/l/", 0o777), fileEntry("x/l/f", 0o644, "escaped")}},
	{name: "dir through own absolute symlink", entries: []tarEntry{
		dirEntry("x/", 0o755), symlinkEntry("x/l", "$BASE/outside"), dirEntry("x/l/", 0o777), fileEntry("x/l/f", 0o644, "escaped")}},
	{name: "file through own symlink", entries: []tarEntry{
		dirEntry("x/", 0o755), symlinkEntry("x/l", "$BASE/outside"), fileEntry("x/l/f", 0o644, "escaped")}},
	{name: "hard link to own symlink", entries: []tarEntry{
		dirEntry("x/", 0o755), symlinkEntry("x/s", "$BASE/outside/file"), linkEntry("x/h", "x/s")}, absent: []string{"h", "x/h"}},
	{name: "hard link through dotdot", entries: []tarEntry{
		dirEntry("x/", 0o755), linkEntry("x/h", "x/../outside/file")}, absent: []string{"h", "x/h"}},
	{name: "hard link up", entries: []tarEntry{
		dirEntry("x/", 0o755), linkEntry("x/h", "../outside/file")}, absent: []string{"h", "x/h"}},
	{name: "hard link absolute", entries: []tarEntry{
		dirEntry("x/", 0o755), linkEntry("x/h", "$BASE/outside/file")}, absent: []string{"h", "x/h"}},
	{name: "hard link first", entries: []tarEntry{linkEntry("x", "x")}},
	{name: "hard link to a file already there", entries: []tarEntry{dirEntry("x/", 0o755), linkEntry("x/h", "x/old")},
		setup: func(tb testing.TB, base, dst string) {
			must(tb, os.Mkdir(filepath.Join(dst, "x"), 0o755))
			must(tb, os.WriteFile(filepath.Join(dst, "x", "old"), []byte("old"), 0o644))
		}, absent: []string{"x/h"}},
	{name: "dir onto a symlink already there", entries: []tarEntry{dirEntry("a/", 0o777), fileEntry("a/f", 0o644, "escaped")},
		setup: func(tb testing.TB, base, dst string) {
			must(tb, os.Symlink(filepath.Join(base, "outside"), filepath.Join(dst, "a")))
		}},
	{name: "file through a symlink already there", entries: []tarEntry{dirEntry("x/", 0o755), fileEntry("x/a/f", 0o644, "escaped")},
		setup: func(tb testing.TB, base, dst string) {
			must(tb, os.Mkdir(filepath.Join(dst, "x"), 0o755))
			must(tb, os.Symlink(filepath.Join(base, "outside"), filepath.Join(dst, "x", "a")))
		}},
}

func TestExtractTarRefusesHostileEntries(t *testing.T) {
	for _, c := range hostileCases {
		for _, into := range []bool{false, true} {
			if c.setup != nil && !into {
				continue
			}
			t.Run(c.name+map[bool]string{false: "/new", true: "/into"}[into], func(t *testing.T) {
				base, dst := layout(t, into)
				if c.setup != nil {
					c.setup(t, base, dst)
				}
				before := outside(t, base)
				var inDst map[string]fileState
				if into {
					inDst = describe(t, dst, "")
				}
				err := extract(t, makeTar(t, base, c.entries), dst, ExtractOptions{})
				if !errors.Is(err, ErrUnsafeEntry) {
					t.Errorf("ExtractTar = %v, want an error matching ErrUnsafeEntry", err)
				}
				var ee *EntryError
				if errors.As(err, &ee) && strings.Contains(ee.Error(), "\n") {
					t.Errorf("error %q is not one line", ee)
				}
				diffStates(t, "outside dst", before, outside(t, base))
				for _, rel := range c.absent {
					for _, at := range []string{dst, filepath.Join(dst, "x")} {
						if _, err := os.Lstat(filepath.Join(at, rel)); err == nil {
							t.Errorf("%s was made", filepath.Join(at, rel))
						}
					}
				}
				// What was in dst before is untouched too (a hard link
				// would raise a link count).
				var after map[string]fileState
				if into {
					after = describe(t, dst, "")
				}
				for p, s := range inDst {
					if got := after[p]; got.nlink != s.nlink || got.content != s.content || got.link != s.link {
						t.Errorf("dst/%s changed: %+v, was %+v", p, got, s)
					}
				}
			})
		}
	}
}

// A symlink already in dst where the archive puts a file or a symlink is
// replaced, not written through: a copy repeated over an old one works.
func TestExtractTarReplacesSymlinksInDst(t *testing.T) {
	base, dst := layout(t, true)
	must(t, os.Mkdir(filepath.Join(dst, "x"), 0o755))
	must(t, os.Symlink(filepath.Join(base, "outside", "file"), filepath.Join(dst, "x", "f")))
	must(t, os.Symlink(filepath.Join(base, "outside"), filepath.Join(dst, "x", "l")))
	before := outside(t, base)
	archive := makeTar(t, base, []tarEntry{dirEntry("x/", 0o755), fileEntry("x/f", 0o644, "new"), symlinkEntry("x/l", "f")})
	if err := extract(t, archive, dst, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	diffStates(t, "outside dst", before, outside(t, base))
	if b, err := os.ReadFile(filepath.Join(dst, "x", "f")); err != nil || string(b) != "new" {
		t.Errorf("x/f = %q, %v; want the archive's file", b, err)
	}
	if fi, err := os.Lstat(filepath.Join(dst, "x", "f")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("x/f is %v, %v; want a regular file", fi.Mode(), err)
	}
	if l, err := os.Readlink(filepath.Join(dst, "x", "l")); err != nil || l != "f" {
		t.Errorf("x/l -> %q, %v; want the archive's link", l, err)
	}
}

func TestExtractTarSetID(t *testing.T) {
	entries := []tarEntry{dirEntry("x/", 0o2775), fileEntry("x/su", 0o4755, "su"), fileEntry("x/sg", 0o2755, "sg"), fileEntry("x/sticky", 0o1777, "t")}
	for _, c := range []struct {
		name string
		opts ExtractOptions
		want map[string]fs.FileMode
	}{
		{"dropped by default", ExtractOptions{}, map[string]fs.FileMode{
			".": fs.ModeDir | 0o775, "su": 0o755, "sg": 0o755, "sticky": fs.ModeSticky | 0o777}},
		{"kept when asked", ExtractOptions{SetID: true}, map[string]fs.FileMode{
			".": fs.ModeDir | fs.ModeSetgid | 0o775, "su": fs.ModeSetuid | 0o755, "sg": fs.ModeSetgid | 0o755, "sticky": fs.ModeSticky | 0o777}},
	} {
		t.Run(c.name, func(t *testing.T) {
			base, dst := layout(t, false)
			if err := extract(t, makeTar(t, base, entries), dst, c.opts); err != nil {
				t.Fatal(err)
			}
			for rel, want := range c.want {
				if fi, err := os.Lstat(filepath.Join(dst, rel)); err != nil || fi.Mode() != want {
					t.Errorf("%s: mode %v, %v; want %v", rel, fi.Mode(), err, want)
				}
			}
		})
	}
}

// Owners come from the archive only when asked, even for root: a guest
// must not make the host's root own its files.
func TestExtractTarOwners(t *testing.T) {
	testenv.RequireRoot(t)
	entries := []tarEntry{dirEntry("x/", 0o755), fileEntry("x/su", 0o4755, "su"), symlinkEntry("x/l", "su")}
	for i := range entries {
		entries[i].uid = 12345
	}
	for _, c := range []struct {
		name     string
		opts     ExtractOptions
		uid      uint32
		suidMode fs.FileMode
	}{
		{"extracting user's by default", ExtractOptions{}, uint32(os.Geteuid()), 0o755},
		{"archive's when asked", ExtractOptions{Owners: true, SetID: true}, 12345, fs.ModeSetuid | 0o755},
	} {
		t.Run(c.name, func(t *testing.T) {
			base, dst := layout(t, false)
			if err := extract(t, makeTar(t, base, entries), dst, c.opts); err != nil {
				t.Fatal(err)
			}
			for rel, st := range describe(t, dst, "") {
				if st.uid != c.uid || st.gid != c.uid {
					t.Errorf("%s is owned by %d:%d, want %d:%d", rel, st.uid, st.gid, c.uid, c.uid)
				}
				if rel == "su" && st.mode != c.suidMode {
					t.Errorf("su: mode %v, want %v", st.mode, c.suidMode)
				}
			}
		})
	}
}

// An honest archive from WriteTar comes back as the tree it was made
// from, like `cp -a`: into an existing directory under its own name, or
// as a new name.
func TestExtractTarRoundTrip(t *testing.T) {
	src := filepath.Join(t.TempDir(), "tree")
	for _, d := range []struct {
		rel  string
		mode fs.FileMode
	}{{"", 0o750}, {"sub", 0o755}, {"sub/deep", 0o700}, {"empty", 0o755}, {"ro", 0o755}} {
		must(t, os.Mkdir(filepath.Join(src, d.rel), d.mode))
	}
	for _, f := range []struct {
		rel  string
		mode fs.FileMode
	}{{"run.sh", 0o750}, {"sub/secret", 0o600}, {"sub/deep/file", 0o644}, {"ro/file", 0o444}} {
		must(t, os.WriteFile(filepath.Join(src, f.rel), []byte("content of "+f.rel), f.mode))
	}
	must(t, os.Symlink("sub/secret", filepath.Join(src, "link")))
	must(t, os.Symlink("../run.sh", filepath.Join(src, "sub", "up")))
	// Modes umask may have cut, and a read-only directory: its
	// contents are written before its mode is set.
	must(t, os.Chmod(filepath.Join(src, "ro"), 0o555))
	writable(t, filepath.Join(src, "ro"))
	must(t, os.Chmod(filepath.Join(src, "sub", "deep"), 0o700))
	// Times last, deepest first: writing into a directory changes its
	// mtime. Nanoseconds survive (PAX).
	for i, rel := range []string{"run.sh", "sub/secret", "sub/deep/file", "ro/file", "sub/deep", "sub", "empty", "ro", ""} {
		mt := time.Unix(1_600_000_000+int64(i)*1000, int64(i)*1_234_567)
		must(t, os.Chtimes(filepath.Join(src, rel), mt, mt))
	}
	want := describe(t, src, "")
	var archive bytes.Buffer
	must(t, WriteTar(&archive, src))

	for _, c := range []struct{ name, dst, tree string }{
		{"into an existing dir", "out", "out/tree"},
		{"as a new name", "out/new", "out/new"},
	} {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			must(t, os.Mkdir(filepath.Join(base, "out"), 0o755))
			writable(t, filepath.Join(base, c.tree, "ro"))
			if err := extract(t, archive.Bytes(), filepath.Join(base, c.dst), ExtractOptions{}); err != nil {
				t.Fatal(err)
			}
			diffStates(t, "copied tree", want, describe(t, filepath.Join(base, c.tree), ""))
		})
	}
}

// writable makes dir writable again when the test ends, so that a user
// who is not root can remove the test's directory.
func writable(tb testing.TB, dir string) {
	tb.Helper()
	tb.Cleanup(func() { os.Chmod(dir, 0o755) })
}
