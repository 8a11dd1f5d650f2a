package imagepull

import (
	"archive/tar"
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
func listTar(tb testing.TB, f *Flattener) (map[string]*tar.Header, map[string]string, []string) {
	tb.Helper()
	var buf bytes.Buffer
	if err := f.WriteTar(&buf); err != nil {
		tb.Fatalf("WriteTar: %v", err)
	}
	hdrs := map[string]*tar.Header{}
	bodies := map[string]string{}
	var order []string
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			tb.Fatalf("reading flattened tar: %v", err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		hdrs[name] = h
		order = append(order, name)
		b, _ := io.ReadAll(tr)
		bodies[name] = string(b)
	}
	return hdrs, bodies, order
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
		ent{name: "etc/", typ: tar.TypeDir},
		ent{name: "etc/keep", body: "keep"},
		ent{name: "etc/gone", body: "gone"},
		ent{name: "opq/", typ: tar.TypeDir},
		ent{name: "opq/old", body: "old"},
		ent{name: "opq/sub/deep", body: "deep"},
		ent{name: "bin/busybox", body: "BB", mode: 0o755},
		ent{name: "dir2file/x", body: "x"},
	)
	top := tarLayer(t,
		ent{name: "etc/.wh.gone", body: ""},
		ent{name: "opq/.wh..wh..opq", body: ""},
		ent{name: "opq/new", body: "new"},
		ent{name: "bin/sh", typ: tar.TypeLink, link: "bin/busybox"}, // cross-layer hard link
		ent{name: "dir2file", body: "now a file"},
		ent{name: "etc/keep", body: "replaced", uid: 1000, gid: 1000},
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
		ent{name: "a/b/c/file", body: "c"},
		ent{name: "a/", typ: tar.TypeDir, mode: 0o700, uid: 5, gid: 6},
		ent{name: "links/early", typ: tar.TypeLink, link: "links/target"},
		ent{name: "links/target", body: "T"},
		ent{name: "keep/lower", body: "lower"},
	)
	l2 := tarLayer(t,
		ent{name: "keep/fresh/x", body: "x"},
		ent{name: "keep/.wh..wh..opq"},
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
	l1 := tarLayer(t, ent{name: "x", body: "lower"}, ent{name: "d/old", body: "o"})
	// Same layer: x is re-added before its whiteout, and d gets a new
	// entry before d's whiteout; both new entries stay.
	l2 := tarLayer(t, ent{name: "x", body: "upper"}, ent{name: ".wh.x"}, ent{name: "d/new", body: "n"}, ent{name: ".wh.d"})
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
		{"dotdot", [][]byte{tarLayer(t, ent{name: "../etc/passwd", body: "x"})}, ErrUnsafeEntry},
		{"dotdot inside", [][]byte{tarLayer(t, ent{name: "a/../../x", body: "x"})}, ErrUnsafeEntry},
		{"absolute escaping", [][]byte{tarLayer(t, ent{name: "/../../etc/shadow", body: "x"})}, ErrUnsafeEntry},
		{"hardlink escapes", [][]byte{tarLayer(t, ent{name: "h", typ: tar.TypeLink, link: "../../etc/shadow"})}, ErrUnsafeEntry},
		{"symlink escapes", [][]byte{tarLayer(t, ent{name: "a/s", typ: tar.TypeSymlink, link: "../../../etc"})}, ErrUnsafeEntry},
		{"write through symlink", [][]byte{tarLayer(t, ent{name: "evil", typ: tar.TypeSymlink, link: "/etc"}, ent{name: "evil/passwd", body: "x"})}, ErrUnsafeEntry},
		{"write through symlink across layers", [][]byte{
			tarLayer(t, ent{name: "evil", typ: tar.TypeSymlink, link: "/etc"}),
			tarLayer(t, ent{name: "evil/passwd", body: "x"}),
		}, ErrUnsafeEntry},
		{"hardlink to missing", [][]byte{tarLayer(t, ent{name: "h", typ: tar.TypeLink, link: "nowhere"})}, ErrBadLayer},
		{"hardlink to dir", [][]byte{tarLayer(t, ent{name: "d/", typ: tar.TypeDir}, ent{name: "h", typ: tar.TypeLink, link: "d"})}, ErrBadLayer},
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
	l := tarLayer(t, ent{name: "big", body: strings.Repeat("z", 10000)})
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
	f.Add(tarLayer(f, ent{name: "a/b", body: "x"}, ent{name: "a/.wh.b"}, ent{name: "l", typ: tar.TypeLink, link: "a/c"}, ent{name: "a/c", body: "y"}), []byte{})
	f.Add(tarLayer(f, ent{name: "s", typ: tar.TypeSymlink, link: "../x"}), tarLayer(f, ent{name: "d/.wh..wh..opq"}))
	f.Add([]byte("not a tar"), tarLayer(f, ent{name: "../../x", body: "z"}))
	f.Fuzz(func(t *testing.T, l1, l2 []byte) {
		fl, err := flattenLayers(t, l1, l2)
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
		tr := tar.NewReader(&buf)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("flattened tar unreadable: %v", err)
			}
			n := strings.TrimSuffix(h.Name, "/")
			if n == "." {
				continue
			}
			if strings.HasPrefix(n, "/") || strings.Contains("/"+n+"/", "/../") || strings.Contains(n, ".wh.") && strings.HasPrefix(n[strings.LastIndex(n, "/")+1:], ".wh.") {
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
		}
	})
}

// sparseBomb is a layer of one old-GNU sparse file: one data byte and a
// declared real size of 8 GiB.
func sparseBomb(tb testing.TB) []byte {
	b := tarLayer(tb, ent{name: "bomb", body: "x"})
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
