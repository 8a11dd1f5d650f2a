package firecracker

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/hostnet"
	"banger/internal/testenv"
	"banger/internal/vmm"
)

// TestFirecrackerRestoreAsFork restores a snapshot the way `vm fork`
// does: a new Firecracker in its own directory, on its own TAP (the
// snapshot names the source's, which is still in use), with its writable
// drive moved to its own copy, running. The guest cannot boot here, so
// this is the API's side of a fork; the load's timing is what it would
// add under KVM.
func TestFirecrackerRestoreAsFork(t *testing.T) {
	bin := requireFirecracker(t)
	testenv.RequireRoot(t)
	ns := testenv.NetNS(t)
	n, err := hostnet.Open(hostnet.Config{NetNS: ns, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.EnsureBridge(); err != nil {
		t.Fatal(err)
	}
	srcTAP, forkTAP := hostnet.TAPName("fc-src"), hostnet.TAPName("fc-fork")
	for _, tap := range []string{srcTAP, forkTAP} {
		if err := n.AddTAP(tap); err != nil {
			t.Fatal(err)
		}
	}
	spec := testSpec(t)
	data := filepath.Join(spec.Dir, "data.ext4")
	if err := os.WriteFile(data, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	spec.Drives = append(spec.Drives, vmm.Drive{ID: "data", Path: data})
	spec.TAP, spec.MAC = srcTAP, hostnet.MAC("fc-src").String()
	b, err := New(bin)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	src := startIn(t, n, b, spec)
	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	snapDir := t.TempDir()
	snap := vmm.Snapshot{State: filepath.Join(snapDir, "state"), Memory: filepath.Join(snapDir, "mem")}
	began := time.Now()
	if err := src.CreateSnapshot(ctx, snap.State, snap.Memory); err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot/create of a 128 MiB VM: %s", time.Since(began).Round(time.Microsecond))
	if err := src.Resume(ctx); err != nil {
		t.Fatal(err)
	}

	forkDir, _ := os.MkdirTemp("", "fcfork")
	defer os.RemoveAll(forkDir)
	forkData := filepath.Join(forkDir, "data.ext4")
	if _, err := vmm.CopyFile(forkData, data); err != nil {
		t.Fatal(err)
	}
	fs := spec
	fs.ID, fs.Dir, fs.TAP, fs.MAC = "fork", forkDir, forkTAP, hostnet.MAC("fc-fork").String()
	fs.Drives = []vmm.Drive{spec.Drives[0], {ID: "data", Path: forkData}}
	var fork vmm.Machine
	began = time.Now()
	if err := n.Do(func() (err error) { fork, err = b.Restore(ctx, fs, snap); return }); err != nil {
		t.Fatal(err)
	}
	t.Logf("restore (spawn, snapshot/load, drive patch, resume): %s", time.Since(began).Round(time.Microsecond))
	defer fork.Kill()
	fm := fork.(*Machine)
	info, err := fm.Client().InstanceInfo(ctx)
	if err != nil || info.State != "Running" {
		t.Fatalf("fork = %+v, %v", info, err)
	}
	cfg, err := fm.Client().VMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	drives, _ := cfg["drives"].([]any)
	paths := map[string]any{}
	for _, d := range drives {
		paths[d.(map[string]any)["drive_id"].(string)] = d.(map[string]any)["path_on_host"]
	}
	if len(paths) != 2 || paths["data"] != forkData || paths["root"] != spec.Drives[0].Path {
		t.Errorf("fork's drives = %v, want the data drive at %s and the image shared", paths, forkData)
	}
	nics, _ := cfg["network-interfaces"].([]any)
	if len(nics) != 1 || nics[0].(map[string]any)["host_dev_name"] != forkTAP {
		t.Errorf("fork's network interfaces = %v, want TAP %s", cfg["network-interfaces"], forkTAP)
	}
	if flags := testenv.IP(t, "-n", ns, "-o", "link", "show", "dev", forkTAP); strings.Contains(flags, "NO-CARRIER") {
		t.Errorf("the fork did not open its own TAP: %s", flags)
	}
	// The source runs on, untouched.
	if info, err := src.Client().InstanceInfo(ctx); err != nil || info.State != "Running" {
		t.Errorf("source after the fork = %+v, %v", info, err)
	}

	// A truncated snapshot is refused by the load, and nothing runs.
	bad := vmm.Snapshot{State: filepath.Join(snapDir, "state.cut"), Memory: snap.Memory}
	st, _ := os.ReadFile(snap.State)
	os.WriteFile(bad.State, st[:len(st)/2], 0o600)
	badDir, _ := os.MkdirTemp("", "fcbad")
	defer os.RemoveAll(badDir)
	bs := fs
	bs.Dir, bs.TAP = badDir, ""
	if m, err := b.Restore(ctx, bs, bad); err == nil {
		m.Kill()
		t.Fatal("a truncated snapshot loaded")
	} else {
		t.Logf("truncated snapshot: %v", err)
	}
}
