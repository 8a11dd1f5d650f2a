package firecracker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/hostnet"
	"banger/internal/kernel"
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

// TestFirecrackerRestoreMapsMemoryPrivate restores two VMs from one
// snapshot with the real binary and checks what vmm.Restorer promises:
// each Firecracker maps the snapshot's memory file itself (the same
// inode: one page cache for both) private, copy-on-write (its File
// backend, MAP_PRIVATE), and the file's bytes never change, through the
// restores, a run, a pause and the forks' end.
func TestFirecrackerRestoreMapsMemoryPrivate(t *testing.T) {
	bin := requireFirecracker(t)
	testenv.RequireRoot(t)
	b, err := New(bin)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	spec := testSpec(t)
	src, err := b.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { src.Kill(); src.Wait(ctx) }()
	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	snapDir := t.TempDir()
	snap := vmm.Snapshot{State: filepath.Join(snapDir, "state"), Memory: filepath.Join(snapDir, "mem")}
	if err := src.CreateSnapshot(ctx, snap.State, snap.Memory); err != nil {
		t.Fatal(err)
	}
	src.Kill()
	before, err := kernel.HashFile(snap.Memory)
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(snap.Memory, &st); err != nil {
		t.Fatal(err)
	}
	inode := strconv.FormatUint(st.Ino, 10)

	var forks []*Machine
	for i := range 2 {
		fs := spec
		fs.ID = fmt.Sprintf("fork%d", i)
		fs.Dir, _ = os.MkdirTemp("", "fcfork")
		defer os.RemoveAll(fs.Dir)
		m, err := b.Restore(ctx, fs, snap)
		if err != nil {
			t.Fatal(err)
		}
		fm := m.(*Machine)
		defer func() { fm.Kill(); fm.Wait(ctx) }()
		forks = append(forks, fm)
	}
	for i, m := range forks {
		maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", m.PID()))
		if err != nil {
			t.Fatal(err)
		}
		var found []string
		for _, l := range strings.Split(string(maps), "\n") {
			if f := strings.Fields(l); len(f) >= 5 && f[4] == inode {
				found = append(found, l)
			}
		}
		if len(found) == 0 {
			t.Errorf("fork %d does not map the snapshot's memory file (inode %s):\n%s", i, inode, maps)
		}
		for _, l := range found {
			if perms := strings.Fields(l)[1]; perms != "rw-p" {
				t.Errorf("fork %d maps the memory file %s, want rw-p (private, copy-on-write): %s", i, perms, l)
			}
		}
		t.Logf("fork %d: %s", i, strings.Join(found, "; "))
	}
	time.Sleep(500 * time.Millisecond) // the guests run (as far as they can here)
	for _, m := range forks {
		m.Pause(ctx)
		m.Resume(ctx)
		m.Kill()
		m.Wait(ctx)
	}
	if after, err := kernel.HashFile(snap.Memory); err != nil || after != before {
		t.Errorf("the snapshot's memory file changed: sha256 %s, then %s (%v)", before, after, err)
	}
}
