package vm

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/store"
)

// Another user's VM is not there for bob: every verb answers exactly as
// for a VM that does not exist, and changes nothing; root sees and acts
// on both users' VMs.
func TestOwnersSeeOnlyTheirOwn(t *testing.T) {
	home := t.TempDir()
	s := testService(t, &fakeBackend{}, newStore(t, home), home)
	ctx := t.Context()
	alice, bob := Caller{UID: 1001, GID: 1001}, Caller{UID: 1002, GID: 1002}
	root := Caller{Admin: true}
	av, err := s.Create(ctx, alice, api.VMCreateRequest{Name: "alicevm"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if av.Owner != alice.UID {
		t.Fatalf("owner %d, want alice's %d", av.Owner, alice.UID)
	}
	// A snapshot of alice's (the fake VMM cannot take one: its record
	// is what the checks read).
	if err := s.store.InsertSnapshot(ctx, &api.Snapshot{ID: "s1", Name: "alicesnap2", Kind: api.SnapshotKindSnapshot, State: "ready", Owner: alice.UID, Dir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}

	// Each verb, for alice's VM and for one that does not exist.
	verbs := map[string]func(c Caller, name string) error{
		"show":     func(c Caller, n string) error { _, err := s.Get(ctx, c, n); return err },
		"start":    func(c Caller, n string) error { _, err := s.Start(ctx, c, n, nil); return err },
		"restart":  func(c Caller, n string) error { _, err := s.Restart(ctx, c, n, nil); return err },
		"stop":     func(c Caller, n string) error { _, err := s.Stop(ctx, c, n); return err },
		"kill":     func(c Caller, n string) error { _, err := s.Kill(ctx, c, n); return err },
		"pause":    func(c Caller, n string) error { _, err := s.Pause(ctx, c, n); return err },
		"resume":   func(c Caller, n string) error { _, err := s.Resume(ctx, c, n); return err },
		"rm":       func(c Caller, n string) error { _, err := s.Remove(ctx, c, n, false); return err },
		"rm -f":    func(c Caller, n string) error { _, err := s.Remove(ctx, c, n, true); return err },
		"snapshot": func(c Caller, n string) error { _, err := s.Snapshot(ctx, c, n, api.SnapshotRequest{}); return err },
		"fork":     func(c Caller, n string) error { _, err := s.Fork(ctx, c, api.ForkRequest{Source: n}); return err },
		"policy": func(c Caller, n string) error {
			_, err := s.SetPolicy(ctx, c, n, api.PolicyRequest{Reset: true})
			return err
		},
		"agent": func(c Caller, n string) error { _, err := s.Agent(ctx, c, n); return err },
		"logs": func(c Caller, n string) error {
			return s.Logs(ctx, c, n, false, &bytes.Buffer{}, func() {})
		},
	}
	for verb, do := range verbs {
		errTheirs := do(bob, "alicevm")
		errNone := do(bob, "novm")
		if !errors.Is(errTheirs, store.ErrNotFound) {
			t.Errorf("bob's %s of alice's VM: %v, want not found", verb, errTheirs)
			continue
		}
		same := strings.ReplaceAll(errTheirs.Error(), "alicevm", "X") == strings.ReplaceAll(errNone.Error(), "novm", "X")
		if !same || !strings.Contains(errTheirs.Error(), "of yours") {
			t.Errorf("bob's %s: %q for alice's VM, %q for none: they must read the same", verb, errTheirs, errNone)
		}
		if v, _ := s.store.VM(ctx, "alicevm"); State(v.State) != Running {
			t.Fatalf("after bob's %s alice's VM is %s", verb, v.State)
		}
	}
	for _, sn := range []string{"alicesnap2"} {
		if _, err := s.GetSnapshot(ctx, bob, sn); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("bob sees alice's snapshot: %v", err)
		}
		if _, err := s.RemoveSnapshot(ctx, bob, sn); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("bob removes alice's snapshot: %v", err)
		}
		if _, err := s.Fork(ctx, bob, api.ForkRequest{Source: sn}); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("bob forks alice's snapshot: %v", err)
		}
	}
	if vms, _ := s.List(ctx, bob); len(vms) != 0 {
		t.Errorf("bob lists %v", vms)
	}
	if sns, _ := s.Snapshots(ctx, bob); len(sns) != 0 {
		t.Errorf("bob lists snapshots %v", sns)
	}
	if n, _ := s.Prune(ctx, bob); len(n) != 0 {
		t.Errorf("bob's prune removed %v", n)
	}
	// A taken name is taken, without saying by whom.
	_, err = s.Create(ctx, bob, api.VMCreateRequest{Name: "alicevm"}, nil)
	if !errors.Is(err, store.ErrExists) || strings.Contains(err.Error(), "rm") || strings.Contains(err.Error(), "1001") {
		t.Errorf("bob's create of a taken name: %v", err)
	}

	// Root sees both users' VMs, with their owners.
	bv, err := s.Create(ctx, bob, api.VMCreateRequest{Name: "bobvm"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	all, _ := s.List(ctx, root)
	owners := map[string]int{}
	for _, v := range all {
		owners[v.Name] = v.Owner
	}
	if owners["alicevm"] != alice.UID || owners["bobvm"] != bob.UID {
		t.Errorf("root's list: %v", owners)
	}
	if _, err := s.Stop(ctx, root, "alicevm"); err != nil {
		t.Errorf("root stops alice's VM: %v", err)
	}
	s.Remove(ctx, root, "alicevm", true)
	s.Remove(ctx, bob, bv.Name, true)
}

// [limits] refuses a VM past a user's limit in one line that names the
// limit and what is in use; root has none; sizes no host can give are
// refused for everyone.
func TestLimits(t *testing.T) {
	home := t.TempDir()
	s := testService(t, &fakeBackend{}, newStore(t, home), home)
	s.cfg.Limits = config.Limits{VMs: 1, VCPUs: 2, Memory: "256M"}
	ctx := t.Context()
	alice := Caller{UID: 1001, GID: 1001}
	if _, err := s.Create(ctx, alice, api.VMCreateRequest{Name: "a1", VCPU: 1, MemoryMiB: 128}, nil); err != nil {
		t.Fatal(err)
	}
	_, err := s.Create(ctx, alice, api.VMCreateRequest{Name: "a2", VCPU: 1, MemoryMiB: 128}, nil)
	if !errors.Is(err, api.ErrLimit) || !strings.Contains(err.Error(), "vms = 1") || !strings.Contains(err.Error(), "a1") {
		t.Errorf("a VM past vms = 1: %v", err)
	}
	if _, err := s.store.VM(ctx, "a2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a refused create left a record: %v", err)
	}
	s.cfg.Limits.VMs = 0
	_, err = s.Create(ctx, alice, api.VMCreateRequest{Name: "a3", VCPU: 2, MemoryMiB: 128}, nil)
	if !errors.Is(err, api.ErrLimit) || !strings.Contains(err.Error(), "vcpus = 2") {
		t.Errorf("past vcpus: %v", err)
	}
	_, err = s.Create(ctx, alice, api.VMCreateRequest{Name: "a4", VCPU: 1, MemoryMiB: 256}, nil)
	if !errors.Is(err, api.ErrLimit) || !strings.Contains(err.Error(), "memory = 256M") {
		t.Errorf("past memory: %v", err)
	}
	// Root has no limits.
	if _, err := s.Create(ctx, Caller{Admin: true}, api.VMCreateRequest{Name: "r1", VCPU: 4, MemoryMiB: 512}, nil); err != nil {
		t.Errorf("root: %v", err)
	}
	for _, req := range []api.VMCreateRequest{
		{Name: "huge", MemoryMiB: 95 << 20}, // 95 TiB
		{Name: "huge2", DiskBytes: 1 << 50}, // 1 PiB
	} {
		_, err := s.Create(ctx, Caller{Admin: true}, req, nil)
		if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "this host has") && !strings.Contains(err.Error(), "holds") {
			t.Errorf("%+v: %v", req, err)
		}
		if _, err := s.store.VM(ctx, req.Name); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s left a record", req.Name)
		}
	}
	for _, n := range []string{"a1", "r1"} {
		s.Remove(context.Background(), Caller{Admin: true}, n, true)
	}
}
