package imagepull

import (
	"banger/internal/imagepull/flatten"
	"banger/internal/imagepull/imagetest"
	"banger/internal/testenv"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"banger/internal/system"
)

type ent = imagetest.Entry

func tarLayer(tb testing.TB, entries ...ent) []byte { return imagetest.Layer(tb, entries...) }

// flattenLayers runs the flattener over the layers and returns it.
func flattenLayers(tb testing.TB, layers ...[]byte) (*flatten.Tree, error) {
	tb.Helper()
	spool, err := os.CreateTemp(tb.TempDir(), "spool")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { spool.Close() })
	f := flatten.New(spool)
	for _, l := range layers {
		if err := f.AddLayer(bytes.NewReader(l)); err != nil {
			return f, err
		}
	}
	return f, nil
}

// buildImage flattens layers and builds an ext4 from them.
func buildImage(tb testing.TB, layers ...[]byte) (string, Ext4Stats) {
	tb.Helper()
	testenv.RequireBinary(tb, "debugfs", "apt-get install e2fsprogs")
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
