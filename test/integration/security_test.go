package integration

import (
	"bytes"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/paths"
	"banger/internal/testenv"
)

// TestGuestRAMAndFilesPrivate: another local user who plants the guest
// RAM directory (its name is predictable) gets nothing: the VM's RAM
// goes into a fresh root-only directory and the daemon's log says why. A
// RAM file swapped for a link is not followed. A VM's and a snapshot's
// files are closed to everyone but root.
func TestGuestRAMAndFilesPrivate(t *testing.T) {
	testenv.RequireRoot(t)
	alice := testUser(t, "banger-alice")
	in := newInstance(t)
	l, err := paths.New(in.home)
	if err != nil {
		t.Fatal(err)
	}
	ramDir := l.RAMDir()
	t.Cleanup(func() {
		aside, _ := filepath.Glob(ramDir + ".untrusted-*")
		for _, p := range append(aside, ramDir) {
			os.RemoveAll(p)
		}
	})
	// Planted before the daemon starts, open to all, alice's.
	if err := os.Mkdir(ramDir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(ramDir, 0o777)
	os.Chown(ramDir, alice.uid, alice.gid)

	vmFixtures(t, in)
	// Meanwhile, a client that never finishes its request header.
	slowClosed := slowClient(t, in.path("run", "bangerd.sock"))
	var v vmJSON
	in.jsonOut(&v, "vm", "create", "--name", "p1", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--network", "none", "--json")
	ram := filepath.Join(ramDir, filepath.Base(v.Dir)+".ram")
	privateDir(t, ramDir)
	if fi, err := os.Lstat(ram); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Errorf("guest RAM file %s: %v %v", ram, fi, err)
	}
	aside, _ := filepath.Glob(ramDir + ".untrusted-*")
	if len(aside) != 1 {
		t.Fatalf("the planted directory was not moved aside: %v", aside)
	} else if ents, _ := os.ReadDir(aside[0]); len(ents) != 0 {
		t.Errorf("the planted directory got files: %v", ents)
	}
	if log, _ := os.ReadFile(in.path("state", "bangerd.log")); !bytes.Contains(log, []byte("moved it aside")) || !bytes.Contains(log, []byte(aside[0])) {
		t.Errorf("the daemon's log does not say the RAM directory was moved aside:\n%s", log)
	}

	// The VM's directory and files: root's only.
	privateDir(t, v.Dir)
	privateFiles(t, v.Dir)

	// A snapshot's, likewise.
	var sn snapshotJSON
	in.jsonOut(&sn, "vm", "snapshot", "p1", "--name", "p1snap", "--json")
	privateDir(t, sn.Dir)
	privateFiles(t, sn.Dir)
	// A fork maps that snapshot's memory file as it is (root's, 0600),
	// and a snapshot of the fork, its memory split out of QEMU's
	// stream, is root's alone too.
	in.ok("vm", "fork", "p1snap", "--name", "p2")
	var sn2 snapshotJSON
	in.jsonOut(&sn2, "vm", "snapshot", "p2", "--name", "p2snap", "--json")
	privateDir(t, sn2.Dir)
	privateFiles(t, sn2.Dir)
	privateFiles(t, sn.Dir)
	in.ok("vm", "rm", "-f", "p2")

	// A RAM file swapped for a link while the VM is stopped: the next
	// start makes a new file and leaves the link's target alone.
	in.ok("vm", "stop", "p1")
	target := filepath.Join(t.TempDir(), "root-only")
	os.WriteFile(target, []byte("root only"), 0o600)
	os.Remove(ram)
	if err := os.Symlink(target, ram); err != nil {
		t.Fatal(err)
	}
	in.ok("vm", "start", "p1")
	if b, _ := os.ReadFile(target); string(b) != "root only" {
		t.Errorf("the start wrote through the planted link: %q", b[:min(len(b), 32)])
	}
	if fi, err := os.Lstat(ram); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("RAM file after start: %v %v", fi, err)
	}
	in.ok("vm", "rm", "-f", "p1")
	slowClosed()
}

// slowClient connects to the daemon's socket and sends half a request
// header; the returned func fails t unless the daemon dropped the
// connection between 9 and 20 seconds later (its ReadHeaderTimeout is
// 10 s), waiting for that when it has not happened yet.
func slowClient(t *testing.T, sock string) func() {
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	io.WriteString(c, "GET /v1/daemon HTTP/1.1\r\nHost: bangerd\r\n")
	closed := make(chan time.Duration, 1)
	go func() {
		io.Copy(io.Discard, c)
		closed <- time.Since(start)
	}()
	return func() {
		t.Helper()
		defer c.Close()
		select {
		case d := <-closed:
			if d < 9*time.Second {
				t.Errorf("the daemon dropped a slow client after %s, before its header timeout", d)
			}
		case <-time.After(time.Until(start.Add(20 * time.Second))):
			t.Errorf("the daemon still holds a connection whose header never came, after 20 s")
		}
	}
}

// privateDir fails t unless dir is a directory of root's, mode 0700.
func privateDir(t *testing.T, dir string) {
	t.Helper()
	fi, err := os.Lstat(dir)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || fi.Mode().Perm() != 0o700 || st.Uid != 0 {
		t.Errorf("%s: mode %v, owner %d; want a 0700 directory of root's", dir, fi.Mode(), st.Uid)
	}
}

// privateFiles fails t for any regular file under dir that others (or
// its group) may read or write.
func privateFiles(t *testing.T, dir string) {
	t.Helper()
	var open []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if fi, err := d.Info(); err == nil && fi.Mode().Perm()&0o077 != 0 {
			open = append(open, strings.TrimPrefix(p, dir+"/")+" "+fi.Mode().String())
		}
		return nil
	})
	if len(open) > 0 {
		t.Errorf("files in %s open to others: %v", dir, open)
	}
}
