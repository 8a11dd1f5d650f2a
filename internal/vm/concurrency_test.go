package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/snapshot"
)

// barrier holds whoever waits on it until n are waiting at once: a
// fake VMM start that waits there proves starts run side by side.
type barrier struct {
	n   int
	mu  sync.Mutex
	in  int
	all chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, all: make(chan struct{})} }

// wait returns once n are waiting, or fails after 10 s: starts that
// run one at a time never get there. A nil barrier does not wait.
func (b *barrier) wait() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	if b.in++; b.in == b.n {
		close(b.all)
	}
	in := b.in
	b.mu.Unlock()
	select {
	case <-b.all:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("only %d of %d VMM starts were under way at once: something serialises them", in, b.n)
	}
}

// TestCreatesStartSideBySide creates four VMs at once: their VMMs start
// at the same time (no lock held across a boot but each VM's own).
func TestCreatesStartSideBySide(t *testing.T) {
	home := t.TempDir()
	b := &fakeBackend{together: newBarrier(4)}
	s := testService(t, b, newStore(t, home), home)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Create(t.Context(), Self(), api.VMCreateRequest{Name: fmt.Sprintf("c%d", i), VCPU: 1, MemoryMiB: 128}, nil)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("create c%d: %v", i, err)
		}
	}
}

// fakeSnapshot records a ready snapshot of the fake backend, with files.
func fakeSnapshot(t *testing.T, s *Service, name string) api.Snapshot {
	t.Helper()
	id := "snap" + name
	dir := s.layout.SnapshotDir(id)
	os.MkdirAll(dir, 0o700)
	for _, f := range []string{snapshot.StateFile, snapshot.MemoryFile, snapshot.DiskFile} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	files, err := snapshot.Describe(dir)
	if err != nil {
		t.Fatal(err)
	}
	agent, _ := s.agentHash()
	sn := api.Snapshot{ID: id, Name: name, Kind: api.SnapshotKindSnapshot, State: string(snapshot.Ready), Image: "img", ImageID: "i1",
		Kernel: "k", KernelID: testKernel.ID, AgentHash: agent, VMM: "fake", VMMVersion: "1.0", VCPU: 1, MemoryMiB: 128,
		DiskBytes: 64 << 20, Network: "none", Dir: dir, Files: files, SizeBytes: snapshot.Size(files), Owner: os.Geteuid()}
	if err := s.store.InsertSnapshot(t.Context(), &sn); err != nil {
		t.Fatal(err)
	}
	return sn
}

// TestForksRestoreSideBySide forks four VMs of one snapshot: the four
// restores are under way at once, and each VM is its own.
func TestForksRestoreSideBySide(t *testing.T) {
	home := t.TempDir()
	b := &fakeBackend{together: newBarrier(4)}
	b.restores.Store(true)
	s := testService(t, b, newStore(t, home), home)
	fakeSnapshot(t, s, "s")
	vms, err := s.Fork(t.Context(), Self(), api.ForkRequest{Source: "s", Name: "f", Count: 4})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i, v := range vms {
		if v.Name != fmt.Sprintf("f-%d", i+1) || v.State != string(Running) || v.Origin != "snapshot s" || seen[v.Dir] {
			t.Errorf("fork %d: %+v", i, v)
		}
		seen[v.Dir] = true
	}
}

// TestForkSomeFail: forks that fail do not stop the others, and the
// error names the ones made.
func TestForkSomeFail(t *testing.T) {
	home := t.TempDir()
	b := &fakeBackend{}
	b.restores.Store(true)
	s := testService(t, b, newStore(t, home), home)
	fakeSnapshot(t, s, "s")
	// f-2's name is taken.
	if _, err := s.Create(t.Context(), Self(), api.VMCreateRequest{Name: "f-2", VCPU: 1, MemoryMiB: 128, NoStart: true}, nil); err != nil {
		t.Fatal(err)
	}
	_, err := s.Fork(t.Context(), Self(), api.ForkRequest{Source: "s", Name: "f", Count: 3})
	if err == nil || !strings.Contains(err.Error(), "fork 2 of 3; 1 failed; made: f-1, f-3") {
		t.Fatalf("fork with one name taken: %v", err)
	}
	for _, n := range []string{"f-1", "f-3"} {
		if st := state(t, s, n); st != Running {
			t.Errorf("%s: %s", n, st)
		}
	}
}

// TestAdmissionsCountEachOther: creates of one user that arrive at once
// count each other against [limits] before any is recorded running.
func TestAdmissionsCountEachOther(t *testing.T) {
	home := t.TempDir()
	b := &fakeBackend{}
	s := testService(t, b, newStore(t, home), home)
	s.cfg.Limits = config.Limits{VCPUs: 2}
	alice := Caller{UID: 1001, GID: 1001}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Create(t.Context(), alice, api.VMCreateRequest{Name: fmt.Sprintf("a%d", i), VCPU: 1, MemoryMiB: 128}, nil)
		}()
	}
	wg.Wait()
	ok, limited := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, api.ErrLimit):
			limited++
		default:
			t.Errorf("create: %v", err)
		}
	}
	if ok != 2 || limited != 2 {
		t.Errorf("%d created, %d refused by [limits] vcpus = 2; want 2 and 2", ok, limited)
	}
}

// TestTemplateFlight: the first of VMs of one shape makes the template;
// the others wait for it.
func TestTemplateFlight(t *testing.T) {
	s := &Service{}
	maker, done := s.templateFlight(t.Context(), "k")
	if !maker {
		t.Fatal("the first is not the maker")
	}
	waited := make(chan bool)
	go func() {
		m, _ := s.templateFlight(t.Context(), "k")
		waited <- m
	}()
	select {
	case <-waited:
		t.Fatal("the second did not wait for the first")
	case <-time.After(100 * time.Millisecond):
	}
	done()
	if m := <-waited; m {
		t.Error("the second became a maker too")
	}
	if m, done := s.templateFlight(t.Context(), "k"); !m {
		t.Error("after the first is done, the next is the maker")
	} else {
		done()
	}
	ctx, cancel := context.WithCancel(t.Context())
	_, done = s.templateFlight(ctx, "j")
	defer done()
	cancel()
	if m, _ := s.templateFlight(ctx, "j"); m {
		t.Error("a waiter whose request ended became a maker")
	}
}

func TestParseSmaps(t *testing.T) {
	const smaps = `55d4c0000000-55d4c0a00000 r-xp 00000000 fe:00 1234                       /usr/bin/qemu-system-x86_64
Size:              10240 kB
Rss:                8000 kB
Anonymous:             0 kB
7f6ebffff000-7f6edffff000 rw-p 00000000 fe:00 10009573                   /var/lib/banger/snapshots/ab cd/memory (deleted)
Size:             524288 kB
Rss:               90000 kB
Pss:               30000 kB
Anonymous:          4000 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                 132 kB
Anonymous:           132 kB
`
	ms := parseSmaps(strings.NewReader(smaps))
	if len(ms) != 3 {
		t.Fatalf("%d mappings: %+v", len(ms), ms)
	}
	m := ms[1]
	if m.path != "/var/lib/banger/snapshots/ab cd/memory" || m.dev != "fe:00" || m.ino != 10009573 || m.rss != 90000<<10 || m.anon != 4000<<10 {
		t.Errorf("snapshot mapping = %+v", m)
	}
	if ms[2].path != "[stack]" || ms[2].anon != 132<<10 {
		t.Errorf("stack = %+v", ms[2])
	}
}
