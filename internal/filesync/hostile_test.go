package filesync

import (
	"bufio"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A guest is not trusted: a path that climbs out of the tree, or goes
// through a symlink in it, must not be written on the host.
func TestSyncRefusesHostilePaths(t *testing.T) {
	host, outside := t.TempDir(), t.TempDir()
	if err := os.Symlink(outside, filepath.Join(host, "lnk")); err != nil {
		t.Fatal(err)
	}
	hc, gc := net.Pipe()
	var logs []string
	logc := make(chan string, 100)
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Host(ctx, hc, host, HostOptions{Log: func(s string) { logc <- s }, Ready: func(Stats) { close(ready) }})
	}()
	r := bufio.NewReader(gc)
	if m, err := readMsg(r); err != nil || m.Op != "hello" {
		t.Fatalf("want hello, got %+v %v", m, err)
	}
	go func() { // the host's puts, rms and acks: read and dropped
		for {
			m, err := readMsg(r)
			if err != nil {
				return
			}
			if m.Op == "put" && m.E.Kind == KindFile {
				r.Discard(int(m.E.Size))
			}
		}
	}()
	put := func(e Entry, body string) {
		e.Size = int64(len(body))
		writeMsg(gc, msg{Op: "put", E: &e})
		gc.Write([]byte(body))
	}
	writeMsg(gc, msg{Op: "manifest", Es: []Entry{{Path: "../evil-manifest", Kind: KindFile}}})
	put(Entry{Path: "../evil", Kind: KindFile, Mode: 0o644}, "escaped")
	put(Entry{Path: "/abs", Kind: KindFile, Mode: 0o644}, "absolute")
	put(Entry{Path: "lnk/through", Kind: KindFile, Mode: 0o644}, "through a link")
	put(Entry{Path: "a/../../up", Kind: KindFile, Mode: 0o4755}, "unclean")
	put(Entry{Path: "ok", Kind: KindFile, Mode: 0o4755}, "fine")
	writeMsg(gc, msg{Op: "rm", P: "../" + filepath.Base(outside), Time: time.Now().UnixNano()})
	writeMsg(gc, msg{Op: "mark"})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("the host ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not ready in 10 s")
	}
	if content := readFile(filepath.Join(host, "ok")); content != "fine" {
		t.Fatalf("the honest put did not land: %q", content)
	}
	if fi, _ := os.Stat(filepath.Join(host, "ok")); fi.Mode()&os.ModeSetuid != 0 {
		t.Errorf("a setuid bit from the guest was kept: %v", fi.Mode())
	}
	ents, _ := os.ReadDir(outside)
	if len(ents) != 0 {
		t.Errorf("something was written outside the tree: %v", ents)
	}
	parent, _ := os.ReadDir(filepath.Dir(host))
	for _, e := range parent {
		if strings.HasPrefix(e.Name(), "evil") || e.Name() == "up" {
			t.Errorf("%s was written beside the tree", e.Name())
		}
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("an rm of ../ removed a directory outside the tree: %v", err)
	}
	cancel()
	<-done
	close(logc)
	for l := range logc {
		logs = append(logs, l)
	}
	if n := strings.Count(strings.Join(logs, "\n"), "refused"); n < 4 {
		t.Errorf("want the hostile puts and the rm refused in the log, got %q", logs)
	}
}

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }
