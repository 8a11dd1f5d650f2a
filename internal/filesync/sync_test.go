package filesync_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/filesync"
	"banger/internal/testenv"
	"banger/internal/vsockagent"
)

// pair is a host sync and the real agent's guest side over one agent
// session on a socketpair: everything but the VM.
type pair struct {
	t           testing.TB
	host, guest string
	cancel      context.CancelFunc
	done        chan error
	stats       filesync.Stats
	mu          sync.Mutex
	logs        []string
	base        map[string]filesync.Entry
	sess        *vsockagent.Session
}

type pairOpts struct {
	ro   bool
	base map[string]filesync.Entry
	data string // where the guest keeps its copies; "" is a new one
}

func startPair(t testing.TB, host, guest string, o pairOpts) *pair {
	t.Helper()
	testenv.RequireRoot(t) // the guest side bind-mounts its copy
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "sock")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	hc, gc := conn(fds[0]), conn(fds[1])
	if o.data == "" {
		o.data = t.TempDir()
	}
	// The agent, with its copies in a test directory rather than the
	// machine's /var/lib/banger/sync.
	agent := vsockagent.NewAgent(vsockagent.Options{})
	handler := func(st *vsockagent.Stream) {
		if st.Req.Op != "filesync" {
			agent.Handle(st)
			return
		}
		err := filesync.Guest(context.Background(), st, st.Req.Path, filesync.GuestOptions{Data: o.data})
		st.SendExit(vsockagent.Exit{Error: fmt.Sprint(err)})
	}
	go vsockagent.Server(vsockagent.NewChannel(gc), vsockagent.Hello{Agent: "test"}, handler, gc)
	sess, err := vsockagent.Client(vsockagent.NewChannel(hc), vsockagent.Hello{}, hc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := sess.Open(context.Background(), vsockagent.Request{Op: "filesync", Path: guest})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &pair{t: t, host: host, guest: guest, cancel: cancel, done: make(chan error, 1), sess: sess}
	ready := make(chan filesync.Stats, 1)
	go func() {
		p.done <- filesync.Host(ctx, st, host, filesync.HostOptions{
			ReadOnly: o.ro, Base: o.base,
			Save: func(b map[string]filesync.Entry) error {
				p.mu.Lock()
				p.base = b
				p.mu.Unlock()
				return nil
			},
			Log: func(s string) {
				p.mu.Lock()
				p.logs = append(p.logs, s)
				p.mu.Unlock()
			},
			Ready: func(s filesync.Stats) { ready <- s },
		})
	}()
	select {
	case p.stats = <-ready:
	case err := <-p.done:
		t.Fatalf("sync ended before it was ready: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("no initial sync in 60 s")
	}
	t.Cleanup(func() {
		p.stop()
		unix.Unmount(guest, unix.MNT_DETACH)
	})
	return p
}

// stop ends the session and returns the base the host kept.
func (p *pair) stop() map[string]filesync.Entry {
	if p.cancel == nil {
		return p.base
	}
	p.cancel()
	p.cancel = nil
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.t.Error("the host side did not end in 10 s")
	}
	p.sess.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.base
}

func (p *pair) logged(sub string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.logs {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

// tree is a directory's content as a sync must reproduce it: kinds,
// modes, link targets, file contents and modification times.
// A file that goes while the tree is read (a sync's temporary file,
// renamed into place) is left out: the tree is read again until it
// settles.
func tree(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil || p == root {
			return err
		}
		rel := p[len(root)+1:]
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			tg, _ := os.Readlink(p)
			out[rel] = "link " + tg
		case d.IsDir():
			out[rel] = fmt.Sprintf("dir %o", fi.Mode().Perm())
		default:
			b, err := os.ReadFile(p)
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			out[rel] = fmt.Sprintf("file %o %x %d", fi.Mode().Perm(), sha256.Sum256(b), fi.ModTime().UnixNano())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diff(a, b map[string]string) string {
	var d []string
	for k, v := range a {
		if b[k] != v {
			d = append(d, fmt.Sprintf("%s: host %q guest %q", k, v, b[k]))
		}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok {
			d = append(d, fmt.Sprintf("%s: only in the guest (%q)", k, v))
		}
	}
	return strings.Join(d, "; ")
}

// converged waits until both trees are the same.
func (p *pair) converged(what string) {
	p.t.Helper()
	var d string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if d = diff(tree(p.t, p.host), tree(p.t, p.guest)); d == "" {
			return
		}
	}
	p.t.Fatalf("%s: the trees differ after 15 s: %s", what, d)
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("%s: not so after 15 s", what)
}

func write(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

func content(p string) string { b, _ := os.ReadFile(p); return string(b) }

func TestSyncInitialAndLive(t *testing.T) {
	host, guest := t.TempDir(), t.TempDir()
	write(t, filepath.Join(host, "README"), "hello\n", 0o644)
	write(t, filepath.Join(host, "run.sh"), "#!/bin/sh\necho hi\n", 0o755)
	write(t, filepath.Join(host, ".git/HEAD"), "ref: refs/heads/main\n", 0o644)
	write(t, filepath.Join(host, ".git/objects/ab/cdef"), "blob", 0o444)
	os.Mkdir(filepath.Join(host, "empty"), 0o750)
	os.Symlink("README", filepath.Join(host, "link"))
	os.Symlink("../../../../etc/passwd", filepath.Join(host, "outside"))
	// What the guest directory held is hidden, as under a mount; what the
	// guest's copy held (a session before) is merged.
	data := t.TempDir()
	write(t, filepath.Join(guest, "hidden.txt"), "the image's own\n", 0o644)
	write(t, filepath.Join(data, guest, "own.txt"), "made in the guest\n", 0o600)

	p := startPair(t, host, guest, pairOpts{data: data})
	p.converged("initial sync")
	if exists(filepath.Join(host, "hidden.txt")) || !exists(filepath.Join(host, "own.txt")) {
		t.Errorf("the guest directory's own content reached the host, or the copy's did not")
	}
	if tg, err := os.Readlink(filepath.Join(guest, "outside")); err != nil || tg != "../../../../etc/passwd" {
		t.Errorf("a link out of the tree is copied as the link: got %q, %v", tg, err)
	}
	if p.stats.Sent == 0 || p.stats.Received != 1 {
		t.Errorf("initial stats %+v: want the host's paths sent and own.txt received", p.stats)
	}

	steps := []struct {
		what string
		do   func()
	}{
		{"a host write", func() { write(t, filepath.Join(host, "a.txt"), "from the host", 0o644) }},
		{"a guest write", func() { write(t, filepath.Join(guest, "b.txt"), "from the guest", 0o640) }},
		{"a deep host mkdir", func() { write(t, filepath.Join(host, "x/y/z/f"), "deep", 0o644) }},
		{"a deep guest mkdir", func() { write(t, filepath.Join(guest, "g/h/i"), "deep guest", 0o644) }},
		{"a host delete", func() { os.Remove(filepath.Join(host, "README")) }},
		{"a guest delete", func() { os.Remove(filepath.Join(guest, "b.txt")) }},
		{"a host directory rename", func() { os.Rename(filepath.Join(host, "x"), filepath.Join(host, "w")) }},
		{"a guest directory removal", func() { os.RemoveAll(filepath.Join(guest, "g")) }},
		{"a host chmod", func() { os.Chmod(filepath.Join(host, "run.sh"), 0o700) }},
		{"a host symlink retarget", func() {
			os.Remove(filepath.Join(host, "link"))
			os.Symlink("run.sh", filepath.Join(host, "link"))
		}},
		{"a big host file", func() { write(t, filepath.Join(host, "big.bin"), strings.Repeat("0123456789abcdef", 512<<10), 0o644) }},
		{"an editor's save in the guest (write a temp, rename over)", func() {
			write(t, filepath.Join(guest, ".run.sh.swp"), "#!/bin/sh\necho edited\n", 0o700)
			os.Rename(filepath.Join(guest, ".run.sh.swp"), filepath.Join(guest, "run.sh"))
		}},
		{"a file replaced by a directory", func() {
			os.Remove(filepath.Join(host, "a.txt"))
			write(t, filepath.Join(host, "a.txt/inner"), "now a dir", 0o644)
		}},
	}
	for _, s := range steps {
		s.do()
		p.converged(s.what)
	}
	if content(filepath.Join(host, "run.sh")) != "#!/bin/sh\necho edited\n" {
		t.Errorf("the guest's edit did not reach the host")
	}
	if exists(filepath.Join(guest, "x")) || !exists(filepath.Join(guest, "w/y/z/f")) {
		t.Errorf("the directory rename did not carry over")
	}
	p.stop()
	for _, d := range []string{host, guest} {
		filepath.WalkDir(d, func(path string, e fs.DirEntry, err error) error {
			if err == nil && strings.HasPrefix(e.Name(), ".banger-sync.") {
				t.Errorf("temporary file left: %s", path)
			}
			return nil
		})
	}
}

func TestSyncReconnectThreeWay(t *testing.T) {
	host, guest, data := t.TempDir(), t.TempDir(), t.TempDir()
	for _, n := range []string{"keep", "hostdel", "guestdel", "gwins", "hwins", "dir/old"} {
		write(t, filepath.Join(host, n), n, 0o644)
	}
	p := startPair(t, host, guest, pairOpts{data: data})
	p.converged("first session")
	time.Sleep(1500 * time.Millisecond) // the base is saved about once a second
	base := p.stop()
	if len(base) != 7 {
		t.Fatalf("the host kept a base of %d paths, want 7: %v", len(base), base)
	}

	// Apart: each side deletes one, adds one, and both change two.
	now := time.Now()
	at := func(path string, d time.Duration) { os.Chtimes(path, now.Add(d), now.Add(d)) }
	os.Remove(filepath.Join(host, "hostdel"))
	os.Remove(filepath.Join(guest, "guestdel"))
	write(t, filepath.Join(host, "hnew"), "h", 0o644)
	write(t, filepath.Join(guest, "gnew"), "g", 0o644)
	write(t, filepath.Join(host, "gwins"), "host's", 0o644)
	at(filepath.Join(host, "gwins"), 10*time.Second)
	write(t, filepath.Join(guest, "gwins"), "guest's", 0o644)
	at(filepath.Join(guest, "gwins"), 20*time.Second)
	write(t, filepath.Join(host, "hwins"), "host's", 0o644)
	at(filepath.Join(host, "hwins"), 20*time.Second)
	write(t, filepath.Join(guest, "hwins"), "guest's", 0o644)
	at(filepath.Join(guest, "hwins"), 10*time.Second)
	os.RemoveAll(filepath.Join(host, "dir"))
	write(t, filepath.Join(guest, "dir/new"), "added under a directory the host removed", 0o644)

	p = startPair(t, host, guest, pairOpts{base: base, data: data})
	p.converged("second session")
	for _, c := range []struct {
		path string
		want bool
	}{{"hostdel", false}, {"guestdel", false}, {"hnew", true}, {"gnew", true}, {"dir/new", true}, {"dir/old", false}, {"keep", true}} {
		if exists(filepath.Join(host, c.path)) != c.want {
			t.Errorf("%s exists = %v, want %v", c.path, !c.want, c.want)
		}
	}
	if got := content(filepath.Join(host, "gwins")); got != "guest's" {
		t.Errorf("gwins: the later guest change should win, host has %q", got)
	}
	if got := content(filepath.Join(guest, "hwins")); got != "host's" {
		t.Errorf("hwins: the later host change should win, guest has %q", got)
	}
	if p.stats.Conflicts != 2 || !p.logged("conflict on gwins") || !p.logged("conflict on hwins") {
		t.Errorf("want two logged conflicts, got %d: %v", p.stats.Conflicts, p.logs)
	}
}

func TestSyncConcurrentWritesConverge(t *testing.T) {
	host, guest := t.TempDir(), t.TempDir()
	p := startPair(t, host, guest, pairOpts{})
	for i := range 30 {
		var wg sync.WaitGroup
		for side, dir := range []string{host, guest} {
			// Sizes differ: two same-sized writes within one tick of the
			// clock look alike to a sync that compares size and mtime
			// (see the package comment).
			wg.Go(func() { write(t, filepath.Join(dir, "same"), strings.Repeat(fmt.Sprint(side), 1+i*2+side), 0o644) })
		}
		wg.Wait()
		time.Sleep(time.Duration(i%5) * time.Millisecond)
	}
	p.converged("30 rounds of writes to one file from both sides")
}

func TestSyncReadOnly(t *testing.T) {
	host, guest, data := t.TempDir(), t.TempDir(), t.TempDir()
	write(t, filepath.Join(host, "a"), "a", 0o644)
	p := startPair(t, host, guest, pairOpts{ro: true, data: data})
	p.converged("initial read-only sync")
	err := os.WriteFile(filepath.Join(guest, "x"), []byte("x"), 0o644)
	if !errors.Is(err, syscall.EROFS) {
		t.Errorf("a write in the guest under a read-only mount: got %v, want EROFS", err)
	}
	write(t, filepath.Join(host, "b"), "b", 0o644)
	p.converged("a host write reaches the read-only copy")
	// Nothing in the guest's copy can reach the host: the guest does not
	// watch it (the condition itself, not a wait for a change that
	// should not come) ...
	copyDir := filepath.Join(data, guest)
	if watched(t, copyDir) {
		t.Errorf("the guest watches its read-only copy %s: its changes would be sent", copyDir)
	}
	// ... which a read-write pair does, so the probe sees watches.
	rwHost, rwGuest, rwData := t.TempDir(), t.TempDir(), t.TempDir()
	startPair(t, rwHost, rwGuest, pairOpts{data: rwData}).converged("a read-write pair beside it")
	if !watched(t, filepath.Join(rwData, rwGuest)) {
		t.Errorf("the probe sees no watch on a read-write pair's copy either")
	}
	// And a change under the bind mount is still not the host's, once a
	// host change made after it has come through.
	write(t, filepath.Join(copyDir, "sneaky"), "written under the bind mount", 0o644)
	write(t, filepath.Join(host, "c"), "c", 0o644)
	eventually(t, "a later host write reaching the copy", func() bool { return content(filepath.Join(guest, "c")) == "c" })
	if exists(filepath.Join(host, "sneaky")) {
		t.Errorf("a read-only mount carried a guest change to the host")
	}
}

// watched reports whether an inotify instance of this process (the
// test's guest side runs here) watches dir.
func watched(t *testing.T, dir string) bool {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(" ino:%x ", st.Ino)
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		if l, _ := os.Readlink("/proc/self/fd/" + fd.Name()); l != "anon_inode:inotify" {
			continue
		}
		info, _ := os.ReadFile("/proc/self/fdinfo/" + fd.Name())
		for _, line := range strings.Split(string(info), "\n") {
			if strings.HasPrefix(line, "inotify wd:") && strings.Contains(line, want) {
				return true
			}
		}
	}
	return false
}

// BenchmarkSyncLatency is the time from a host write to the guest
// seeing it, against the baseline of pushing the same file through the
// agent's put (a tar stream, as `banger vm cp` does) over the same
// session.
func BenchmarkSyncLatency(b *testing.B) {
	host, guest := b.TempDir(), b.TempDir()
	p := startPair(b, host, guest, pairOpts{})
	b.Run("sync", func(b *testing.B) {
		for i := range b.N {
			body := fmt.Sprintf("change %d\n", i)
			write(b, filepath.Join(host, "f"), body, 0o644)
			for content(filepath.Join(guest, "f")) != body {
				time.Sleep(50 * time.Microsecond)
			}
		}
	})
	b.Run("put-baseline", func(b *testing.B) {
		for i := range b.N {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			body := fmt.Sprintf("change %d\n", i)
			tw.WriteHeader(&tar.Header{Name: "g", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
			tw.Write([]byte(body))
			tw.Close()
			p.putTar(b, guest, buf.Bytes())
			if content(filepath.Join(guest, "g")) != body {
				b.Fatal("the put did not land")
			}
		}
	})
}

// BenchmarkInitialSync is the first sync of a 10,000-file tree (100
// directories), against the baseline of the same tree through the
// agent's put (one tar stream, as `vm run PATH` copies a repository).
func BenchmarkInitialSync(b *testing.B) {
	host := b.TempDir()
	for i := range 10000 {
		write(b, filepath.Join(host, fmt.Sprintf("d%03d/f%03d.txt", i/100, i%100)), fmt.Sprintf("file %d\n", i), 0o644)
	}
	b.Run("sync", func(b *testing.B) {
		for range b.N {
			p := startPair(b, host, b.TempDir(), pairOpts{})
			p.stop()
		}
	})
	b.Run("tar-baseline", func(b *testing.B) {
		p := startPair(b, b.TempDir(), b.TempDir(), pairOpts{})
		for range b.N {
			var buf bytes.Buffer
			if err := vsockagent.WriteTar(&buf, host); err != nil {
				b.Fatal(err)
			}
			dst := b.TempDir()
			p.putTar(b, dst, buf.Bytes())
			if content(filepath.Join(dst, filepath.Base(host), "d099/f099.txt")) != "file 9999\n" {
				b.Fatal("the tar did not land")
			}
		}
	})
}

// putTar unpacks a tar stream at dir through the agent's put.
func (p *pair) putTar(b *testing.B, dir string, tarball []byte) {
	st, err := p.sess.Open(context.Background(), vsockagent.Request{Op: "put", Path: dir})
	if err != nil {
		b.Fatal(err)
	}
	st.Write(tarball)
	st.CloseWrite()
	if e, err := st.Wait(context.Background()); err != nil || e.Code != 0 {
		b.Fatal(e, err)
	}
}

// A full guest disk fails the file it cannot hold, says so in the
// host's log, leaves no temporary file, and the sync goes on.
func TestSyncGuestDiskFull(t *testing.T) {
	host, guest, data := t.TempDir(), t.TempDir(), t.TempDir()
	testenv.RequireRoot(t) // a small tmpfs for the guest's copy
	if err := unix.Mount("tmpfs", data, "tmpfs", 0, "size=256k"); err != nil {
		testenv.Skip(t, fmt.Sprintf("mounting a tmpfs: %v", err))
	}
	t.Cleanup(func() { unix.Unmount(data, unix.MNT_DETACH) })
	p := startPair(t, host, guest, pairOpts{data: data})
	write(t, filepath.Join(host, "big"), strings.Repeat("x", 1<<20), 0o644)
	eventually(t, "the guest's disk-full error in the host's log", func() bool { return p.logged("the disk is full") })
	write(t, filepath.Join(host, "small"), "fits", 0o644)
	eventually(t, "a file that fits after one that did not", func() bool { return content(filepath.Join(guest, "small")) == "fits" })
	if exists(filepath.Join(guest, "big")) {
		t.Errorf("the file that did not fit is in the guest")
	}
	ents, _ := os.ReadDir(guest)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".banger-sync.") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}
