package imagepull

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/system"
)

// ent is one tar entry of a test layer.
type ent struct {
	name     string
	typ      byte // default TypeReg
	mode     int64
	uid, gid int
	body     string
	link     string
	major    int64
	minor    int64
	xattrs   map[string]string
}

var testTime = time.Unix(1700000000, 0)

// tarLayer builds an uncompressed tar layer from entries, in order.
func tarLayer(tb testing.TB, entries ...ent) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
			if typ == tar.TypeDir {
				mode = 0o755
			}
		}
		hdr := &tar.Header{Name: e.name, Typeflag: typ, Mode: mode, Uid: e.uid, Gid: e.gid,
			Linkname: e.link, Devmajor: e.major, Devminor: e.minor, ModTime: testTime, Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		for k, v := range e.xattrs {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(hdr); err != nil {
			tb.Fatalf("writing header %s: %v", e.name, err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// flattenLayers runs the flattener over the layers and returns it.
func flattenLayers(tb testing.TB, layers ...[]byte) (*Flattener, error) {
	tb.Helper()
	spool, err := os.CreateTemp(tb.TempDir(), "spool")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { spool.Close() })
	f := NewFlattener(spool)
	for _, l := range layers {
		if err := f.AddLayer(bytes.NewReader(l)); err != nil {
			return f, err
		}
	}
	return f, nil
}

func requireBinary(tb testing.TB, name string) {
	tb.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("BANGER_TEST_STRICT") == "1" {
			tb.Fatalf("%s not on PATH (BANGER_TEST_STRICT=1): install e2fsprogs", name)
		}
		tb.Skipf("%s not on PATH: install e2fsprogs to run this test", name)
	}
}

// buildImage flattens layers and builds an ext4 from them.
func buildImage(tb testing.TB, layers ...[]byte) (string, Ext4Stats) {
	tb.Helper()
	requireBinary(tb, "debugfs")
	f, err := flattenLayers(tb, layers...)
	if err != nil {
		tb.Fatalf("flatten: %v", err)
	}
	out := filepath.Join(tb.TempDir(), "rootfs.ext4")
	st, err := BuildExt4(context.Background(), system.Runner{}, f, out, DefaultHeadroom)
	if err != nil {
		tb.Fatalf("build ext4: %v", err)
	}
	return out, st
}

// e2fsckClean fails unless `e2fsck -fn` finds nothing to fix.
func e2fsckClean(tb testing.TB, img string) {
	tb.Helper()
	out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput()
	if err != nil {
		tb.Fatalf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
}

// debugfsCmd runs one read-only debugfs request.
func debugfsCmd(tb testing.TB, img, req string) string {
	tb.Helper()
	out, err := exec.Command("debugfs", "-R", req, img).CombinedOutput()
	if err != nil {
		tb.Fatalf("debugfs -R %q: %v\n%s", req, err, out)
	}
	return string(out)
}

// inodeInfo is what `debugfs stat` says of one path.
type inodeInfo struct {
	Exists   bool
	Inode    int
	Type     string
	Mode     int64
	UID, GID int
	Links    int
	Size     int64
	Major    int
	Minor    int
	Target   string
}

var (
	reInode = regexp.MustCompile(`Inode: (\d+)\s+Type: (.+?)\s+Mode:\s+(\d+)`)
	reUser  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	reLinks = regexp.MustCompile(`Links: (\d+)`)
	reSize  = regexp.MustCompile(`Size: (\d+)`)
	reDev   = regexp.MustCompile(`Device major/minor number: (\d+):(\d+)`)
	reFast  = regexp.MustCompile(`Fast link dest: "(.*)"`)
)

func stat(tb testing.TB, img, p string) inodeInfo {
	tb.Helper()
	out := debugfsCmd(tb, img, "stat "+p)
	m := reInode.FindStringSubmatch(out)
	if m == nil {
		return inodeInfo{}
	}
	info := inodeInfo{Exists: true, Type: m[2]}
	info.Inode, _ = strconv.Atoi(m[1])
	info.Mode, _ = strconv.ParseInt(m[3], 8, 64)
	if u := reUser.FindStringSubmatch(out); u != nil {
		info.UID, _ = strconv.Atoi(u[1])
		info.GID, _ = strconv.Atoi(u[2])
	}
	if l := reLinks.FindStringSubmatch(out); l != nil {
		info.Links, _ = strconv.Atoi(l[1])
	}
	if s := reSize.FindStringSubmatch(out); s != nil {
		info.Size, _ = strconv.ParseInt(s[1], 10, 64)
	}
	if d := reDev.FindStringSubmatch(out); d != nil {
		info.Major, _ = strconv.Atoi(d[1])
		info.Minor, _ = strconv.Atoi(d[2])
	}
	if f := reFast.FindStringSubmatch(out); f != nil {
		info.Target = f[1]
	}
	return info
}

// catFile returns a file's content as debugfs reads it.
func catFile(tb testing.TB, img, p string) string {
	tb.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+p, img).Output()
	if err != nil {
		tb.Fatalf("debugfs cat %s: %v", p, err)
	}
	return string(out)
}

// xattr returns one extended attribute's value, or "" when missing.
func xattr(tb testing.TB, img, p, name string) string {
	tb.Helper()
	out, err := exec.Command("debugfs", "-R", "ea_get "+p+" "+name, img).CombinedOutput()
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(out))
	if i := strings.Index(s, "\n"); i >= 0 && strings.HasPrefix(s, "debugfs ") {
		s = strings.TrimSpace(s[i+1:])
	}
	return s
}
