package vm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/cgroup"
	"banger/internal/testenv"
)

func TestCgroupLimits(t *testing.T) {
	mount := api.Mount{Kind: api.MountVirtioFS}
	for _, c := range []struct {
		name     string
		v        api.VM
		overhead int64
		want     cgroup.Limits
	}{
		{"guest memory plus overhead, vCPUs and the VMM's, its tasks", api.VM{MemoryMiB: 256, VCPU: 1}, vmMemoryOverhead,
			cgroup.Limits{MemoryBytes: 256<<20 + 192<<20, CPUs: 2, Pids: 160}},
		{"bigger VM", api.VM{MemoryMiB: 4096, VCPU: 8}, vmMemoryOverhead,
			cgroup.Limits{MemoryBytes: 4<<30 + 192<<20, CPUs: 9, Pids: 160}},
		{"each mount adds its helper's tasks", api.VM{MemoryMiB: 512, VCPU: 2, Mounts: []api.Mount{mount, {Kind: api.MountSync}}}, vmMemoryOverhead,
			cgroup.Limits{MemoryBytes: 512<<20 + 192<<20, CPUs: 3, Pids: 160 + 2*96}},
		{"a test's lower overhead", api.VM{MemoryMiB: 256, VCPU: 1}, 16 << 20,
			cgroup.Limits{MemoryBytes: 272 << 20, CPUs: 2, Pids: 160}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := limits(c.v, c.overhead)
			if got != c.want {
				t.Errorf("limits = %+v, want %+v", got, c.want)
			}
			if err := got.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
	if s := New(Deps{}); s.memOverhead != vmMemoryOverhead {
		t.Errorf("default overhead %d, want %d", s.memOverhead, vmMemoryOverhead)
	}
}

// liveCgroups is a cgroup manager on this host under a parent of the
// test's own, removed (after its groups) when the test ends.
func liveCgroups(t *testing.T) *cgroup.Manager {
	t.Helper()
	testenv.RequireRoot(t)
	b := make([]byte, 4)
	rand.Read(b)
	m, err := cgroup.New(fmt.Sprintf("bgt-vm-%x", b))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Require(t, m.Check() == nil, fmt.Sprintf("this host cannot make cgroups: %v", m.Check()))
	t.Cleanup(func() {
		for _, name := range must(m.List()) {
			for _, pid := range must(m.Procs(name)) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			t.Errorf("cgroup %s left behind", name)
			waitFor(t, func() bool { return m.Remove(name) == nil })
		}
		if err := m.RemoveParent(); err != nil {
			t.Errorf("clean-up: %v", err)
		}
	})
	return m
}

func must[T any](v T, _ error) T { return v }

func waitFor(t *testing.T, ok func() bool) bool {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ok() {
			return true
		}
	}
	return false
}

// removeAtEnd removes the named VMs with s when the test ends, failed
// or not (before s closes): their VMMs would run on.
func removeAtEnd(t *testing.T, s *Service, names ...string) {
	t.Cleanup(func() {
		for _, n := range names {
			s.Remove(context.Background(), Self(), n, true)
		}
	})
}

// agentUp waits for the agent session a start opens in the background.
// A service closed before that session's first dial (a test that ends
// early) panics in agentSession, whose dialing map closeAgents leaves
// nil.
func agentUp(t *testing.T, s *Service, v api.VM) {
	t.Helper()
	if _, err := s.agentSession(t.Context(), v); err != nil {
		t.Fatal(err)
	}
}

// inGroup reports whether pid is in group id.
func inGroup(m *cgroup.Manager, id string, pid int) bool {
	pids, err := m.Procs(id)
	return err == nil && slices.Contains(pids, pid)
}

// TestCgroupLifecycle drives a VM's group through its life with the
// fake VMM on this host's real cgroups: made before the VMM, which
// starts inside; gone after a stop, a kill, a failed start or rm;
// made again on adoption, with a VMM started uncontained moved in;
// groups of no live VM swept.
func TestCgroupLifecycle(t *testing.T) {
	m := liveCgroups(t)
	home := t.TempDir()
	st := newStore(t, home)
	b := &fakeBackend{}
	withCgroups := func(d *Deps) { d.Cgroups = m }
	s := testService(t, b, st, home, withCgroups)
	ctx := t.Context()
	removeAtEnd(t, s, "c1", "c2")

	v, err := s.Create(ctx, Self(), api.VMCreateRequest{Name: "c1", VCPU: 1, MemoryMiB: 128}, nil)
	if err != nil {
		t.Fatal(err)
	}
	agentUp(t, s, *v)
	if !inGroup(m, v.ID, v.PID) {
		t.Fatalf("the VMM %d is not in its VM's group: %v", v.PID, must(m.Procs(v.ID)))
	}
	if _, err := s.Stop(ctx, Self(), "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Procs(v.ID); !errors.Is(err, cgroup.ErrNotFound) {
		t.Errorf("group after a stop: %v", err)
	}
	if v, err = s.Start(ctx, Self(), "c1", nil); err != nil || !inGroup(m, v.ID, v.PID) {
		t.Fatalf("start: %v, VMM in its group: %v", err, inGroup(m, v.ID, v.PID))
	}
	if _, err := s.Kill(ctx, Self(), "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Procs(v.ID); !errors.Is(err, cgroup.ErrNotFound) {
		t.Errorf("group after a kill: %v", err)
	}

	// A start that fails leaves no group.
	b.setFail(errors.New("no such VMM"))
	if _, err := s.Start(ctx, Self(), "c1", nil); !errors.Is(err, ErrStart) {
		t.Fatalf("failed start: %v", err)
	}
	b.setFail(nil)
	if names := must(m.List()); len(names) != 0 {
		t.Errorf("groups after a failed start: %v", names)
	}

	// A daemon restart: the group is made again and a VMM that is not
	// in it (started without containment) moved in; a group of no VM
	// and what runs in it go.
	s.Close()
	plain := testService(t, b, st, home)
	v2, err := plain.Create(ctx, Self(), api.VMCreateRequest{Name: "c2", VCPU: 1, MemoryMiB: 128}, nil)
	if err != nil {
		t.Fatal(err)
	}
	agentUp(t, plain, *v2)
	plain.Close()
	if err := m.Create("stray", cgroup.Limits{}); err != nil {
		t.Fatal(err)
	}
	stray := exec.Command("sleep", "60")
	stray.SysProcAttr = &syscall.SysProcAttr{}
	if err := m.StartIn("stray", stray.SysProcAttr, stray.Start); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan struct{})
	go func() { stray.Wait(); close(strayDone) }()
	s2 := testService(t, b, st, home, withCgroups)
	removeAtEnd(t, s2, "c1", "c2")
	if err := s2.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	agentUp(t, s2, must(s2.Get(ctx, Self(), "c2")))
	if !inGroup(m, v2.ID, v2.PID) {
		t.Errorf("the adopted VMM %d is not in its group: %v", v2.PID, must(m.Procs(v2.ID)))
	}
	if names := must(m.List()); !slices.Equal(names, []string{v2.ID}) {
		t.Errorf("groups after reconcile: %v, want only %s", names, v2.ID)
	}
	select {
	case <-strayDone:
	case <-time.After(10 * time.Second):
		t.Errorf("the stray group's process survived the sweep")
	}
	// rm -f of the adopted VM leaves no group.
	if _, err := s2.Remove(ctx, Self(), "c2", true); err != nil {
		t.Fatal(err)
	}
	if names := must(m.List()); len(names) != 0 {
		t.Errorf("groups after rm -f: %v", names)
	}
}

// TestOutOfMemory: a VMM that goes past its group's memory limit is
// killed by the kernel, and only it: the VM ends in error saying so,
// its group goes, and another VM runs on.
func TestOutOfMemory(t *testing.T) {
	m := liveCgroups(t)
	home := t.TempDir()
	b := &fakeBackend{}
	s := testService(t, b, newStore(t, home), home, func(d *Deps) { d.Cgroups, d.MemoryOverhead = m, 1<<20 })
	ctx := t.Context()
	removeAtEnd(t, s, "calm", "hog")
	calm, err := s.Create(ctx, Self(), api.VMCreateRequest{Name: "calm", VCPU: 1, MemoryMiB: 128}, nil)
	if err != nil {
		t.Fatal(err)
	}
	agentUp(t, s, *calm)
	b.hog.Store(true)
	hog, err := s.Create(ctx, Self(), api.VMCreateRequest{Name: "hog", VCPU: 1, MemoryMiB: 128}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var v api.VM
	if !waitFor(t, func() bool { v, _ = s.Get(ctx, Self(), "hog"); return State(v.State) == Error }) {
		t.Fatalf("the VM whose VMM went past its limit: %+v", v)
	}
	if v.Error != oomMessage {
		t.Errorf("error %q, want %q", v.Error, oomMessage)
	}
	if !waitFor(t, func() bool { _, err := m.Procs(hog.ID); return errors.Is(err, cgroup.ErrNotFound) }) {
		t.Errorf("the killed VM's group is still there: %v", must(m.Procs(hog.ID)))
	}
	if st := state(t, s, "calm"); st != Running || !vmmProcess(calm.PID, calm.Dir) {
		t.Errorf("the other VM: %s", st)
	}
}
