package vsockagent

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/testenv"
)

// fsPair is an agent whose users are root and tuser (home: a temporary
// directory), and a session to it.
func fsPair(t *testing.T) (*Session, string) {
	t.Helper()
	testenv.RequireRoot(t)
	root, home := t.TempDir(), t.TempDir()
	os.Chown(home, testUID, testUID)
	writeEtc(t, root, home)
	return pairWith(t, detachedAgent(t, Options{Root: root})), home
}

// owned fails unless path belongs to tuser.
func owned(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != testUID || st.Gid != testUID {
		t.Errorf("%s belongs to %d:%d, want tuser's %d", path, st.Uid, st.Gid, testUID)
	}
}

func TestWriteReadStatAsTheUser(t *testing.T) {
	s, home := fsPair(t)
	ctx := ctxFor(t, 30*time.Second)
	e, err := WriteFile(ctx, s, "~/a/b/file.txt", "tuser", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(home, "a/b/file.txt")
	if e.Path != want || e.Name != "file.txt" || e.Type != TypeFile || e.Size != 5 || e.Owner != "tuser" || e.Group != "tuser" || e.Mode != 0o644 || e.Permissions != "-rw-r--r--" || e.MtimeNs == 0 {
		t.Errorf("entry = %+v", e)
	}
	for _, p := range []string{"a", "a/b", "a/b/file.txt"} {
		owned(t, filepath.Join(home, p))
	}
	if fi, _ := os.Stat(filepath.Join(home, "a/b")); fi.Mode().Perm() != 0o755 {
		t.Errorf("made parent has mode %v", fi.Mode())
	}
	// Overwrite, relative to home; it truncates.
	if _, err := WriteFile(ctx, s, "a/b/file.txt", "tuser", strings.NewReader("hi")); err != nil {
		t.Fatal(err)
	}
	r, err := ReadFile(ctx, s, want, "root")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(r); err != nil || string(b) != "hi" {
		t.Errorf("read back %q, %v", b, err)
	}
	r.Close()
	// An empty file reads as nothing, without error.
	WriteFile(ctx, s, "~/empty", "tuser", strings.NewReader(""))
	if r, err := ReadFile(ctx, s, "~/empty", "tuser"); err != nil {
		t.Errorf("empty file: %v", err)
	} else if b, _ := io.ReadAll(r); len(b) != 0 {
		t.Errorf("empty file read %q", b)
	}
	// Large: more than a window each way.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	if e, err := WriteFile(ctx, s, "~/big", "tuser", bytes.NewReader(big)); err != nil || e.Size != int64(len(big)) {
		t.Fatalf("big write = %+v, %v", e, err)
	}
	r, _ = ReadFile(ctx, s, "~/big", "tuser")
	if b, _ := io.ReadAll(r); !bytes.Equal(b, big) {
		t.Errorf("big read: %d bytes back", len(b))
	}

	st, err := Stat(ctx, s, "~/a", "tuser")
	if err != nil || st.Type != TypeDir || st.Path != filepath.Join(home, "a") || st.Permissions != "drwxr-xr-x" {
		t.Errorf("stat dir = %+v, %v", st, err)
	}
	os.Symlink(filepath.Join(home, "a"), filepath.Join(home, "link"))
	st, err = Stat(ctx, s, "~/link", "tuser")
	if err != nil || st.Type != TypeDir || st.SymlinkTarget != filepath.Join(home, "a") {
		t.Errorf("stat symlink = %+v, %v", st, err)
	}
	os.Symlink("nowhere", filepath.Join(home, "dangling"))
	if st, err := Stat(ctx, s, "~/dangling", "tuser"); err != nil || st.Type != TypeSymlink || st.SymlinkTarget != "nowhere" {
		t.Errorf("stat dangling symlink = %+v, %v", st, err)
	}

	for _, c := range []struct {
		name string
		err  error
		code string
	}{
		{"read missing", func() error { _, err := ReadFile(ctx, s, "~/nope", "tuser"); return err }(), CodeNotFound},
		{"read dir", func() error { _, err := ReadFile(ctx, s, "~/a", "tuser"); return err }(), CodeIsDir},
		{"stat missing", func() error { _, err := Stat(ctx, s, "/no/such", "tuser"); return err }(), CodeNotFound},
		{"write onto a dir", func() error { _, err := WriteFile(ctx, s, "~/a", "tuser", strings.NewReader("x")); return err }(), CodeIsDir},
		{"write below a file", func() error {
			_, err := WriteFile(ctx, s, "~/a/b/file.txt/x", "tuser", strings.NewReader("x"))
			return err
		}(), CodeNotDir},
		{"unknown user", func() error { _, err := Stat(ctx, s, "/", "nobody-here"); return err }(), CodeNoUser},
		{"no path", func() error { _, err := Stat(ctx, s, "", "tuser"); return err }(), CodeInvalid},
	} {
		if !IsCode(c.err, c.code) {
			t.Errorf("%s: %v, want code %s", c.name, c.err, c.code)
		}
	}
}

func TestMakeDirMoveRemoveList(t *testing.T) {
	s, home := fsPair(t)
	ctx := ctxFor(t, 30*time.Second)
	e, err := MakeDir(ctx, s, "~/d1/d2", "tuser")
	if err != nil || e.Type != TypeDir || e.Path != filepath.Join(home, "d1/d2") || e.Owner != "tuser" {
		t.Fatalf("mkdir = %+v, %v", e, err)
	}
	owned(t, filepath.Join(home, "d1"))
	owned(t, filepath.Join(home, "d1/d2"))
	if _, err := MakeDir(ctx, s, "~/d1/d2", "tuser"); !IsCode(err, CodeExists) {
		t.Errorf("mkdir of an existing dir = %v, want exists", err)
	}
	os.WriteFile(filepath.Join(home, "f"), []byte("x"), 0o644)
	if _, err := MakeDir(ctx, s, "~/f/sub", "tuser"); !IsCode(err, CodeNotDir) {
		t.Errorf("mkdir through a file = %v, want not_dir", err)
	}
	if _, err := MakeDir(ctx, s, "~/f", "tuser"); !IsCode(err, CodeNotDir) {
		t.Errorf("mkdir onto a file = %v, want not_dir", err)
	}

	e, err = Move(ctx, s, "~/f", "~/m/n/moved", "tuser")
	if err != nil || e.Path != filepath.Join(home, "m/n/moved") || e.Type != TypeFile {
		t.Fatalf("mv = %+v, %v", e, err)
	}
	owned(t, filepath.Join(home, "m"))
	owned(t, filepath.Join(home, "m/n"))
	if _, err := os.Stat(filepath.Join(home, "f")); !os.IsNotExist(err) {
		t.Errorf("the source is still there: %v", err)
	}
	if _, err := Move(ctx, s, "~/nope", "~/x", "tuser"); !IsCode(err, CodeNotFound) {
		t.Errorf("mv of a missing path = %v, want not_found", err)
	}

	names := func(es []Entry) []string {
		var out []string
		for _, e := range es {
			rel, _ := filepath.Rel(home, e.Path)
			out = append(out, rel)
		}
		slices.Sort(out)
		return out
	}
	ls, err := ListDir(ctx, s, "~", "tuser", 1)
	if got := names(ls); err != nil || !slices.Equal(got, []string{"d1", "m"}) {
		t.Errorf("ls depth 1 = %v, %v", got, err)
	}
	ls, err = ListDir(ctx, s, "~", "tuser", 3)
	if got := names(ls); err != nil || !slices.Equal(got, []string{"d1", "d1/d2", "m", "m/n", "m/n/moved"}) {
		t.Errorf("ls depth 3 = %v, %v", got, err)
	}
	os.Symlink(filepath.Join(home, "m"), filepath.Join(home, "mlink"))
	ls, err = ListDir(ctx, s, "~/mlink", "tuser", 1)
	if err != nil || len(ls) != 1 || ls[0].Name != "n" {
		t.Errorf("ls of a symlinked dir = %+v, %v", ls, err)
	}
	if _, err := ListDir(ctx, s, "~/m/n/moved", "tuser", 1); !IsCode(err, CodeNotDir) {
		t.Errorf("ls of a file = %v, want not_dir", err)
	}
	if _, err := ListDir(ctx, s, "~/nope", "tuser", 1); !IsCode(err, CodeNotFound) {
		t.Errorf("ls of a missing dir = %v, want not_found", err)
	}

	if err := Remove(ctx, s, "~/d1", "tuser"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(home, "d1")); !os.IsNotExist(err) {
		t.Errorf("rm left d1: %v", err)
	}
	if err := Remove(ctx, s, "~/d1", "tuser"); err != nil {
		t.Errorf("rm of a missing path = %v, want nil", err)
	}
}

// A full file system is no_space (a 64 KiB tmpfs).
func TestWriteNoSpace(t *testing.T) {
	s, _ := fsPair(t)
	ctx := ctxFor(t, 30*time.Second)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		testenv.Skip(t, fmt.Sprintf("mounting a tmpfs: %v", err))
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	_, err := WriteFile(ctx, s, filepath.Join(dir, "big"), "tuser", bytes.NewReader(make([]byte, 1<<20)))
	if !IsCode(err, CodeNoSpace) {
		t.Errorf("write of 1 MiB into 64 KiB = %v, want no_space", err)
	}
}

func TestWatchRecursive(t *testing.T) {
	s, home := fsPair(t)
	ctx := ctxFor(t, 30*time.Second)
	root := filepath.Join(home, "w")
	os.MkdirAll(filepath.Join(root, "old"), 0o755)
	w, err := WatchDir(ctx, s, "~/w", "tuser", true)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	events := make(chan WatchEvent, 100)
	go func() {
		for {
			ev, err := w.Next()
			if err != nil {
				close(events)
				return
			}
			events <- ev
		}
	}()
	expect := func(name, op string) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("watch ended before %s %s", op, name)
				}
				if ev.Name == name && ev.Op == op {
					return
				}
			case <-timeout:
				t.Fatalf("no %s event for %s", op, name)
			}
		}
	}
	os.WriteFile(filepath.Join(root, "f"), []byte("x"), 0o644)
	expect("f", "create")
	expect("f", "write")
	os.WriteFile(filepath.Join(root, "old/inner"), []byte("x"), 0o644)
	expect("old/inner", "create")
	os.Mkdir(filepath.Join(root, "new"), 0o755)
	expect("new", "create")
	time.Sleep(50 * time.Millisecond) // the new directory's watch is armed
	os.WriteFile(filepath.Join(root, "new/deep"), []byte("x"), 0o644)
	expect("new/deep", "create")
	os.Rename(filepath.Join(root, "f"), filepath.Join(root, "new/g"))
	expect("f", "rename")
	expect("new/g", "create")
	os.Chmod(filepath.Join(root, "new/g"), 0o600)
	expect("new/g", "chmod")
	os.Remove(filepath.Join(root, "new/g"))
	expect("new/g", "remove")
	w.Close()

	if _, err := WatchDir(ctx, s, "~/nope", "tuser", false); !IsCode(err, CodeNotFound) {
		t.Errorf("watch of a missing dir = %v, want not_found", err)
	}
	os.WriteFile(filepath.Join(home, "file"), nil, 0o644)
	if _, err := WatchDir(ctx, s, "~/file", "tuser", false); !IsCode(err, CodeNotDir) {
		t.Errorf("watch of a file = %v, want not_dir", err)
	}
}

func TestMetrics(t *testing.T) {
	s := pair(t)
	m, err := GetMetrics(ctxFor(t, 10*time.Second), s)
	if err != nil {
		t.Fatal(err)
	}
	if m.CPUCount < 1 || m.CPUUsedPct < 0 || m.CPUUsedPct > 100 || m.MemTotal == 0 || m.MemUsed == 0 || m.MemUsed > m.MemTotal || m.DiskTotal == 0 || m.DiskUsed > m.DiskTotal {
		t.Errorf("metrics = %+v", m)
	}
}

// TestEnsureUserWithoutGroupFile: a busybox image has /etc/passwd only;
// group and shadow are made, group readable by everyone.
func TestEnsureUserWithoutGroupFile(t *testing.T) {
	testenv.RequireRoot(t)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	s := pairWith(t, detachedAgent(t, Options{Root: root}))
	u, err := EnsureUser(ctxFor(t, 10*time.Second), s, "user", "")
	if err != nil || !u.Created || u.UID != 1000 || u.GID != 1000 {
		t.Fatalf("ensure = %+v, %v", u, err)
	}
	for file, want := range map[string]os.FileMode{"group": 0o644, "shadow": 0o600} {
		fi, err := os.Stat(filepath.Join(root, "etc", file))
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want mode %v", file, fi, err, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/group")); string(b) != "user:x:1000:\n" {
		t.Errorf("group: %q", b)
	}
}

func TestEnsureUserIsIdempotent(t *testing.T) {
	testenv.RequireRoot(t)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/skel"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\ntaken:x:1000:1000::/home/taken:/bin/sh"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\ntaken:x:1000:\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/shadow"), []byte("root:*:19000:0:99999:7:::\n"), 0o640)
	os.WriteFile(filepath.Join(root, "etc/skel/.profile"), []byte("# hi\n"), 0o644)
	s := pairWith(t, detachedAgent(t, Options{Root: root}))
	ctx := ctxFor(t, 10*time.Second)
	u, err := EnsureUser(ctx, s, "user", "/home/user")
	if err != nil {
		t.Fatal(err)
	}
	if !u.Created || u.UID != 1001 || u.GID != 1001 || u.Home != "/home/user" {
		t.Errorf("first ensure = %+v", u)
	}
	again, err := EnsureUser(ctx, s, "user", "")
	if err != nil || again.Created || again.UID != u.UID || again.GID != u.GID || again.Home != "/home/user" {
		t.Errorf("second ensure = %+v, %v", again, err)
	}
	for file, want := range map[string]string{
		"passwd": "user:x:1001:1001::/home/user:/bin/sh",
		"group":  "user:x:1001:",
		"shadow": "user:*:",
	} {
		b, _ := os.ReadFile(filepath.Join(root, "etc", file))
		if n := strings.Count(string(b), "\nuser:"); n != 1 || !strings.Contains(string(b), want) {
			t.Errorf("%s has %d user lines:\n%s", file, n, b)
		}
	}
	if fi, _ := os.Stat(filepath.Join(root, "etc/shadow")); fi.Mode().Perm() != 0o640 {
		t.Errorf("shadow's mode changed to %v", fi.Mode())
	}
	home := filepath.Join(root, "home/user")
	fi, err := os.Stat(home)
	if err != nil || fi.Mode().Perm() != 0o755 || fi.Sys().(*syscall.Stat_t).Uid != 1001 {
		t.Errorf("home: %v %v", fi, err)
	}
	if b, err := os.ReadFile(filepath.Join(home, ".profile")); err != nil || string(b) != "# hi\n" {
		t.Errorf("skel's .profile: %q %v", b, err)
	}
	// The agent resolves the new user at once: exec as it.
	if lookup, err := lookupIdentity(root, "user"); err != nil || lookup.uid != 1001 || lookup.home != "/home/user" {
		t.Errorf("lookup after ensure = %+v, %v", lookup, err)
	}
	for _, bad := range []string{"", "Root", "a:b", "x\ny", strings.Repeat("a", 40)} {
		if _, err := EnsureUser(ctx, s, bad, ""); !IsCode(err, CodeInvalid) {
			t.Errorf("ensure_user %q = %v, want invalid", bad, err)
		}
	}
	if _, err := EnsureUser(ctx, s, "other", "relative/home"); !IsCode(err, CodeInvalid) {
		t.Errorf("relative home = %v, want invalid", err)
	}
	// A bash in the image is the shell of the next account.
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.WriteFile(filepath.Join(root, "bin/bash"), nil, 0o755)
	if u, err := EnsureUser(ctx, s, "second", ""); err != nil || u.UID != 1002 {
		t.Errorf("second user = %+v, %v", u, err)
	}
	b, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if !strings.Contains(string(b), "second:x:1002:1002::/home/second:/bin/bash\n") {
		t.Errorf("passwd:\n%s", b)
	}
}
