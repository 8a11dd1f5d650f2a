package snapshot

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"banger/internal/api"
)

func TestStates(t *testing.T) {
	if s, err := Next(Creating, EvWritten); err != nil || s != Ready {
		t.Errorf("creating + written = %q, %v", s, err)
	}
	if _, err := Next(Creating, EvRemove); !errors.Is(err, ErrInvalidState) {
		t.Errorf("removing a snapshot being written: %v", err)
	}
	if s, err := Next(Ready, EvRemove); err != nil || s != gone {
		t.Errorf("ready + remove = %q, %v", s, err)
	}
}

// TestVerify writes a snapshot's files, describes them, and checks that
// truncation, changed device state, a missing file and the wrong VMM
// are each refused with the snapshot's name.
func TestVerify(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{StateFile: "device state", MemoryFile: "ram", DiskFile: "disk"} {
		os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600)
	}
	files, err := Describe(dir)
	if err != nil || len(files) != 3 || files[0].SHA256 == "" {
		t.Fatalf("describe = %+v, %v", files, err)
	}
	sn := api.Snapshot{Name: "s", State: string(Ready), Dir: dir, Files: files, VMM: "qemu", VMMVersion: "7.2.22"}
	if err := Verify(sn); err != nil {
		t.Fatal(err)
	}
	if err := Compatible(sn, "qemu", "7.2.22"); err != nil {
		t.Error(err)
	}
	if err := Compatible(sn, "qemu", "8.0.0"); !errors.Is(err, ErrIncompatible) {
		t.Errorf("another QEMU version: %v", err)
	}
	if err := Compatible(sn, "firecracker", "v1.14.2"); !errors.Is(err, ErrIncompatible) {
		t.Errorf("another VMM: %v", err)
	}
	os.WriteFile(filepath.Join(dir, StateFile), []byte("device stat!"), 0o600)
	if err := Verify(sn); !errors.Is(err, ErrDamaged) {
		t.Errorf("changed state: %v", err)
	}
	os.WriteFile(filepath.Join(dir, StateFile), []byte("device state"), 0o600)
	os.Truncate(filepath.Join(dir, MemoryFile), 1)
	if err := Verify(sn); !errors.Is(err, ErrDamaged) {
		t.Errorf("truncated memory: %v", err)
	}
	os.Remove(filepath.Join(dir, DiskFile))
	if err := Verify(sn); !errors.Is(err, ErrDamaged) {
		t.Errorf("missing disk: %v", err)
	}
	sn.State = string(Creating)
	if err := Verify(sn); !errors.Is(err, ErrInvalidState) {
		t.Errorf("a snapshot being written: %v", err)
	}
}

func TestKey(t *testing.T) {
	a := Key(1000, "qemu", "7.2", "img", "k", "agent", 1, 256, 1<<27, "none")
	if a != Key(1000, "qemu", "7.2", "img", "k", "agent", 1, 256, 1<<27, "none") || a == Key(1000, "qemu", "7.2", "img", "k", "agent", 2, 256, 1<<27, "none") {
		t.Error("the key does not follow the VM's shape")
	}
	if a == Key(1001, "qemu", "7.2", "img", "k", "agent", 1, 256, 1<<27, "none") {
		t.Error("two users share a template: it holds the first one's memory")
	}
}
