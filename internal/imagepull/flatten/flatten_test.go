package flatten

import (
	"os"
	"path"

	"archive/tar"
	"banger/internal/imagepull/imagetest"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"testing"
	"time"
)

// listTar reads a flattened tar into path → header (and content).
func listTar(tb testing.TB, f *Tree) (map[string]*tar.Header, map[string]string, []string) {
	tb.Helper()
	var buf bytes.Buffer
	if err := f.WriteTar(&buf); err != nil {
		tb.Fatalf("WriteTar: %v", err)
	}
	hdrs := map[string]*tar.Header{}
	bodies := map[string]string{}
	var order []string
	eachEntry(tb, &buf, func(name string, h *tar.Header, body []byte) {
		hdrs[name] = h
		order = append(order, name)
		bodies[name] = string(body)
	})
	return hdrs, bodies, order
}

// eachEntry calls fn for every entry of a flattened tar, with the name
// stripped of a trailing "/".
func eachEntry(tb testing.TB, r io.Reader, fn func(name string, h *tar.Header, body []byte)) {
	tb.Helper()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			tb.Fatalf("flattened tar unreadable: %v", err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			tb.Fatalf("flattened tar unreadable: %v", err)
		}
		fn(strings.TrimSuffix(h.Name, "/"), h, body)
	}
}

func names(m map[string]*tar.Header) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestFlattenSemantics(t *testing.T) {
	base := tarLayer(t,
		ent{Name: "etc/", Type: tar.TypeDir},
		ent{Name: "etc/keep", Body: "keep"},
		ent{Name: "etc/gone", Body: "gone"},
		ent{Name: "opq/", Type: tar.TypeDir},
		ent{Name: "opq/old", Body: "old"},
		ent{Name: "opq/sub/deep", Body: "deep"},
		ent{Name: "bin/busybox", Body: "BB", Mode: 0o755},
		ent{Name: "dir2file/x", Body: "x"},
	)
	top := tarLayer(t,
		ent{Name: "etc/.wh.gone", Body: ""},
		ent{Name: "opq/.wh..wh..opq", Body: ""},
		ent{Name: "opq/new", Body: "new"},
		ent{Name: "bin/sh", Type: tar.TypeLink, Link: "bin/busybox"}, // cross-layer hard link
		ent{Name: "dir2file", Body: "now a file"},
		ent{Name: "etc/keep", Body: "replaced", UID: 1000, GID: 1000},
	)
	f, err := flattenLayers(t, base, top)
	if err != nil {
		t.Fatal(err)
	}
	hdrs, bodies, _ := listTar(t, f)
	got := strings.Join(names(hdrs), " ")
	want := ". bin bin/busybox bin/sh dir2file etc etc/keep opq opq/new"
	if got != want {
		t.Fatalf("paths:\n got %s\nwant %s", got, want)
	}
	if bodies["etc/keep"] != "replaced" || hdrs["etc/keep"].Uid != 1000 {
		t.Errorf("etc/keep = %q uid %d, want replaced by upper layer", bodies["etc/keep"], hdrs["etc/keep"].Uid)
	}
	if hdrs["bin/sh"].Typeflag != tar.TypeLink || hdrs["bin/sh"].Linkname != "bin/busybox" {
		t.Errorf("bin/sh = %+v, want hard link to bin/busybox", hdrs["bin/sh"])
	}
	if bodies["dir2file"] != "now a file" {
		t.Errorf("dir2file = %q", bodies["dir2file"])
	}
}

func TestFlattenOrderQuirks(t *testing.T) {
	// Entries before their directory's header, a hard link before its
	// target, and an opaque marker after entries of the same layer.
	l1 := tarLayer(t,
		ent{Name: "a/b/c/file", Body: "c"},
		ent{Name: "a/", Type: tar.TypeDir, Mode: 0o700, UID: 5, GID: 6},
		ent{Name: "links/early", Type: tar.TypeLink, Link: "links/target"},
		ent{Name: "links/target", Body: "T"},
		ent{Name: "keep/lower", Body: "lower"},
	)
	l2 := tarLayer(t,
		ent{Name: "keep/fresh/x", Body: "x"},
		ent{Name: "keep/.wh..wh..opq"},
	)
	f, err := flattenLayers(t, l1, l2)
	if err != nil {
		t.Fatal(err)
	}
	hdrs, bodies, order := listTar(t, f)
	if h := hdrs["a"]; h == nil || h.Mode != 0o700 || h.Uid != 5 || h.Gid != 6 {
		t.Errorf("a = %+v, want the late header's mode 0700 uid 5 gid 6", h)
	}
	if bodies["a/b/c/file"] != "c" {
		t.Errorf("a/b/c/file lost")
	}
	// One of the pair carries the content, the other links to it.
	e, tg := hdrs["links/early"], hdrs["links/target"]
	if e.Typeflag != tar.TypeReg || bodies["links/early"] != "T" || tg.Typeflag != tar.TypeLink || tg.Linkname != "links/early" {
		t.Errorf("link pair = %+v / %+v", e, tg)
	}
	if _, ok := hdrs["keep/lower"]; ok {
		t.Errorf("opaque marker did not hide keep/lower")
	}
	if bodies["keep/fresh/x"] != "x" {
		t.Errorf("opaque marker hid the same layer's keep/fresh/x")
	}
	pos := map[string]int{}
	for i, n := range order {
		pos[n] = i
	}
	for n := range hdrs {
		if n == "." {
			continue
		}
		parent := n[:max(0, strings.LastIndex(n, "/"))]
		if parent == "" {
			parent = "."
		}
		if pos[parent] > pos[n] {
			t.Errorf("%s written before its parent %s", n, parent)
		}
	}
}

func TestFlattenWhiteoutOnlyHidesLowerLayers(t *testing.T) {
	l1 := tarLayer(t, ent{Name: "x", Body: "lower"}, ent{Name: "d/old", Body: "o"})
	// Same layer: x is re-added before its whiteout, and d gets a new
	// entry before d's whiteout; both new entries stay.
	l2 := tarLayer(t, ent{Name: "x", Body: "upper"}, ent{Name: ".wh.x"}, ent{Name: "d/new", Body: "n"}, ent{Name: ".wh.d"})
	f, err := flattenLayers(t, l1, l2)
	if err != nil {
		t.Fatal(err)
	}
	hdrs, bodies, _ := listTar(t, f)
	if bodies["x"] != "upper" {
		t.Errorf("x = %q, want upper", bodies["x"])
	}
	if _, ok := hdrs["d/old"]; ok {
		t.Errorf("whiteout of d kept lower d/old")
	}
	if bodies["d/new"] != "n" {
		t.Errorf("whiteout of d dropped the same layer's d/new")
	}
}

func TestFlattenRejectsHostileEntries(t *testing.T) {
	cases := []struct {
		name   string
		layers [][]byte
		want   error
	}{
		{"dotdot", [][]byte{tarLayer(t, ent{Name: "../etc/passwd", Body: "x"})}, ErrUnsafeEntry},
		{"dotdot inside", [][]byte{tarLayer(t, ent{Name: "a/../../x", Body: "x"})}, ErrUnsafeEntry},
		{"absolute escaping", [][]byte{tarLayer(t, ent{Name: "/../../etc/shadow", Body: "x"})}, ErrUnsafeEntry},
		{"hardlink escapes", [][]byte{tarLayer(t, ent{Name: "h", Type: tar.TypeLink, Link: "../../etc/shadow"})}, ErrUnsafeEntry},
		{"symlink escapes", [][]byte{tarLayer(t, ent{Name: "a/s", Type: tar.TypeSymlink, Link: "../../../etc"})}, ErrUnsafeEntry},
		{"write through symlink", [][]byte{tarLayer(t, ent{Name: "evil", Type: tar.TypeSymlink, Link: "/etc"}, ent{Name: "evil/passwd", Body: "x"})}, ErrUnsafeEntry},
		{"write through symlink across layers", [][]byte{
			tarLayer(t, ent{Name: "evil", Type: tar.TypeSymlink, Link: "/etc"}),
			tarLayer(t, ent{Name: "evil/passwd", Body: "x"}),
		}, ErrUnsafeEntry},
		{"hardlink to missing", [][]byte{tarLayer(t, ent{Name: "h", Type: tar.TypeLink, Link: "nowhere"})}, ErrBadLayer},
		{"hardlink to dir", [][]byte{tarLayer(t, ent{Name: "d/", Type: tar.TypeDir}, ent{Name: "h", Type: tar.TypeLink, Link: "d"})}, ErrBadLayer},
		{"not a tar", [][]byte{[]byte(strings.Repeat("garbage!", 200))}, ErrBadLayer},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := flattenLayers(t, c.layers...)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
}

func TestFlattenTruncatedLayer(t *testing.T) {
	l := tarLayer(t, ent{Name: "big", Body: strings.Repeat("z", 10000)})
	_, err := flattenLayers(t, l[:3000])
	if !errors.Is(err, ErrBadLayer) {
		t.Fatalf("err = %v, want ErrBadLayer", err)
	}
}

func TestCheckSymlink(t *testing.T) {
	ok := []struct{ p, target string }{
		{"lib64", "usr/lib64"},
		{"usr/lib/x", "../../bin/y"},
		{"a/b/c", "/anything/../at/all"},
		{"x", "./y"},
	}
	for _, c := range ok {
		if err := checkSymlink(c.p, c.target); err != nil {
			t.Errorf("checkSymlink(%q, %q) = %v, want ok", c.p, c.target, err)
		}
	}
	bad := []struct{ p, target string }{
		{"x", "../y"},
		{"usr/x", "../../y"},
		{"a/b", "c/../../../d"},
	}
	for _, c := range bad {
		if err := checkSymlink(c.p, c.target); !errors.Is(err, ErrUnsafeEntry) {
			t.Errorf("checkSymlink(%q, %q) = %v, want ErrUnsafeEntry", c.p, c.target, err)
		}
	}
}

// FuzzFlatten feeds arbitrary bytes as layers. Whatever the input, the
// flattener must not panic, and what it accepts must write a tar whose
// paths are clean, relative and ordered parent-first.
func FuzzFlatten(f *testing.F) {
	f.Add(tarLayer(f, ent{Name: "a/b", Body: "x"}, ent{Name: "a/.wh.b"}, ent{Name: "l", Type: tar.TypeLink, Link: "a/c"}, ent{Name: "a/c", Body: "y"}), []byte{})
	f.Add(tarLayer(f, ent{Name: "s", Type: tar.TypeSymlink, Link: "../x"}), tarLayer(f, ent{Name: "d/.wh..wh..opq"}))
	f.Add([]byte("not a tar"), tarLayer(f, ent{Name: "../../x", Body: "z"}))
	f.Fuzz(func(t *testing.T, l1, l2 []byte) {
		fl := New(&memSpool{})
		// Keep each exec cheap; TestFlattenRejectsSparseBomb covers the
		// real budget.
		fl.maxHoles = 1 << 20
		err := fl.AddLayer(bytes.NewReader(l1))
		if err == nil {
			err = fl.AddLayer(bytes.NewReader(l2))
		}
		if err != nil {
			if !errors.Is(err, ErrBadLayer) && !errors.Is(err, ErrUnsafeEntry) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		var buf bytes.Buffer
		if err := fl.WriteTar(&buf); err != nil {
			if errors.Is(err, ErrBadLayer) {
				return
			}
			t.Fatalf("WriteTar: %v", err)
		}
		seen := map[string]bool{".": true}
		eachEntry(t, &buf, func(n string, h *tar.Header, _ []byte) {
			if n == "." {
				return
			}
			if strings.HasPrefix(n, "/") || strings.Contains("/"+n+"/", "/../") || strings.HasPrefix(path.Base(n), ".wh.") {
				t.Fatalf("unclean path %q in output", h.Name)
			}
			parent := "."
			if i := strings.LastIndex(n, "/"); i >= 0 {
				parent = n[:i]
			}
			if !seen[parent] {
				t.Fatalf("%q before its parent", n)
			}
			if h.Typeflag == tar.TypeLink && !seen[h.Linkname] {
				t.Fatalf("hard link %q before its target %q", n, h.Linkname)
			}
			seen[n] = true
		})
	})
}

// sparseBomb is a layer of one old-GNU sparse file: one data byte and a
// declared real size of 8 GiB.
func sparseBomb(tb testing.TB) []byte {
	b := tarLayer(tb, ent{Name: "bomb", Body: "x"})
	h := b[:512]
	h[156] = tar.TypeGNUSparse
	copy(h[257:265], "ustar  \x00")
	copy(h[386:398], "00000000000\x00") // sparse[0].offset
	copy(h[398:410], "00000000001\x00") // sparse[0].numbytes
	copy(h[483:495], "77777777777\x00") // realsize
	copy(h[148:156], "        ")
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

func TestFlattenRejectsSparseBomb(t *testing.T) {
	start := time.Now()
	_, err := flattenLayers(t, sparseBomb(t))
	if !errors.Is(err, ErrBadLayer) || !strings.Contains(err.Error(), "sparse") {
		t.Fatalf("err = %v, want ErrBadLayer about a sparse file", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to reject", d)
	}
}

type ent = imagetest.Entry

func tarLayer(tb testing.TB, entries ...ent) []byte { return imagetest.Layer(tb, entries...) }

// flattenLayers runs a Tree over the layers, spooling into a temp file.
func flattenLayers(tb testing.TB, layers ...[]byte) (*Tree, error) {
	tb.Helper()
	spool, err := os.CreateTemp(tb.TempDir(), "spool")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { spool.Close() })
	f := New(spool)
	for _, l := range layers {
		if err := f.AddLayer(bytes.NewReader(l)); err != nil {
			return f, err
		}
	}
	return f, nil
}

// memSpool is an in-memory Spool for the fuzzer.
type memSpool struct{ b []byte }

func (m *memSpool) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memSpool) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
