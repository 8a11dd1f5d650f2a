// Package snapshot is the life of a VM snapshot: the states a snapshot
// goes through, the files it is made of, capturing them from a paused
// VMM (memory, device state and the writable disk at one instant),
// checking them before a restore, and the key a warm template is found
// by. It knows VMMs only through the vmm interfaces; the daemon holds
// the locks and the records.
package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/kernel"
	"banger/internal/vmm"
)

// State is where a snapshot is in its life. The values are the API's.
type State string

const (
	Creating State = "creating" // files being written; not usable
	Ready    State = "ready"    // complete and checked: restores from it
)

// Event moves a snapshot from one state to another.
type Event string

const (
	EvWritten Event = "written" // every file is in place
	EvFail    Event = "fail"    // capture failed: the snapshot goes
	EvRemove  Event = "remove"  // the user removes it
)

// gone is the state after a snapshot's record and files are removed.
const gone State = ""

var transitions = map[State]map[Event]State{
	Creating: {EvWritten: Ready, EvFail: gone},
	Ready:    {EvRemove: gone},
}

// ErrInvalidState means an operation does not apply to a snapshot's
// state.
var ErrInvalidState = errors.New("invalid state")

// Next returns the state after ev; gone ("") when the snapshot ends.
func Next(s State, ev Event) (State, error) {
	if to, ok := transitions[s][ev]; ok {
		return to, nil
	}
	hint := ""
	if s == Creating {
		hint = ": it is still being written"
	}
	return s, fmt.Errorf("%w: cannot %s a snapshot that is %s%s", ErrInvalidState, ev, s, hint)
}

// File names in a snapshot's directory.
const (
	StateFile  = "state"     // the VMM's device state
	MemoryFile = "memory"    // guest RAM, sparse
	DiskFile   = "disk.ext4" // the VM's writable disk, sparse or reflinked
)

// Paths are where a snapshot's files are.
func Paths(dir string) vmm.Snapshot {
	return vmm.Snapshot{State: filepath.Join(dir, StateFile), Memory: filepath.Join(dir, MemoryFile)}
}

// Stages are how long each step of a capture took; Paused is how long
// the guest was frozen.
type Stages struct {
	Pause, State, Disk, Resume, Paused time.Duration
}

func (s Stages) String() string {
	return fmt.Sprintf("pause %s, memory and device state %s, disk %s, resume %s (guest frozen %s)",
		round(s.Pause), round(s.State), round(s.Disk), round(s.Resume), round(s.Paused))
}

func round(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }

// Capture writes a snapshot of the running VM m, whose writable disk is
// dataDisk, into dir (which must exist and be empty): it pauses the
// guest (the VMM drains and flushes its disks), has the VMM write device
// state and memory, copies the disk, and resumes the guest, whatever
// happened. With keepPaused the guest stays frozen on success (the
// caller stops it). On error dir's files are removed.
func Capture(ctx context.Context, m vmm.Machine, dataDisk, dir string, keepPaused bool) (files []api.SnapshotFile, st Stages, err error) {
	p, ok1 := m.(vmm.Pauser)
	s, ok2 := m.(vmm.Snapshotter)
	if !ok1 || !ok2 {
		return nil, st, fmt.Errorf("%w: snapshots", vmm.ErrNotSupported)
	}
	began := time.Now()
	if err := p.Pause(ctx); err != nil {
		return nil, st, fmt.Errorf("pausing the VM: %w", err)
	}
	frozen := time.Now()
	st.Pause = frozen.Sub(began)
	defer func() {
		if err != nil {
			for _, f := range []string{StateFile, MemoryFile, DiskFile} {
				os.Remove(filepath.Join(dir, f))
			}
		}
		if err != nil || !keepPaused {
			t := time.Now()
			// A guest left frozen is worse than a failed snapshot: resume
			// even when the caller's context has ended.
			rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			rerr := p.Resume(rctx)
			cancel()
			st.Resume = time.Since(t)
			if rerr != nil && err == nil {
				err = fmt.Errorf("resuming the VM after its snapshot: %w", rerr)
			}
		}
		st.Paused = time.Since(frozen)
	}()
	paths := Paths(dir)
	if err := s.CreateSnapshot(ctx, paths.State, paths.Memory); err != nil {
		return nil, st, fmt.Errorf("writing memory and device state: %w", err)
	}
	st.State = time.Since(frozen)
	t := time.Now()
	if _, err := vmm.CopyFile(filepath.Join(dir, DiskFile), dataDisk); err != nil {
		return nil, st, fmt.Errorf("copying the writable disk: %w", err)
	}
	st.Disk = time.Since(t)
	// The VMM writes the state and memory with its own umask; they hold
	// the guest's memory and secrets: root (and the owner, through
	// banger) only, like the directory.
	for _, f := range []string{StateFile, MemoryFile, DiskFile} {
		if err := os.Chmod(filepath.Join(dir, f), 0o600); err != nil {
			return nil, st, fmt.Errorf("closing the snapshot's files to others: %w", err)
		}
	}
	files, err = Describe(dir)
	return files, st, err
}

// Describe lists a snapshot's files with their sizes, and the device
// state's checksum.
func Describe(dir string) ([]api.SnapshotFile, error) {
	var out []api.SnapshotFile
	for _, f := range []struct{ role, name string }{{"state", StateFile}, {"memory", MemoryFile}, {"disk", DiskFile}} {
		p := filepath.Join(dir, f.name)
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		sf := api.SnapshotFile{Role: f.role, Name: f.name, SizeBytes: fi.Size(), DiskBytes: allocated(fi)}
		if f.role == "state" {
			if sf.SHA256, err = kernel.HashFile(p); err != nil {
				return nil, err
			}
		}
		out = append(out, sf)
	}
	return out, nil
}

// Size is the bytes files occupy on disk.
func Size(files []api.SnapshotFile) int64 {
	var n int64
	for _, f := range files {
		n += f.DiskBytes
	}
	return n
}

func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// Verify checks, before a restore, that the snapshot's files are all
// there with the sizes recorded and that the device state is the one
// written. Memory is checked by size only (hashing it would cost more
// than the restore); a damaged one shows as a guest that never answers.
func Verify(sn api.Snapshot) error {
	if State(sn.State) != Ready {
		return fmt.Errorf("%w: snapshot %q is %s: wait for it, or remove it with `banger snapshot rm %s`", ErrInvalidState, sn.Name, sn.State, sn.Name)
	}
	for _, f := range sn.Files {
		p := filepath.Join(sn.Dir, f.Name)
		fi, err := os.Stat(p)
		if err != nil {
			return damaged(sn, fmt.Sprintf("its %s file is missing", f.Role))
		}
		if fi.Size() != f.SizeBytes {
			return damaged(sn, fmt.Sprintf("its %s file is %d bytes, %d were written", f.Role, fi.Size(), f.SizeBytes))
		}
		if f.SHA256 != "" {
			got, err := kernel.HashFile(p)
			if err != nil {
				return err
			}
			if got != f.SHA256 {
				return damaged(sn, fmt.Sprintf("its %s file changed since it was written", f.Role))
			}
		}
	}
	if len(sn.Files) != 3 {
		return damaged(sn, "its record lists no files")
	}
	return nil
}

// ErrDamaged means a snapshot's files are not what was written.
var ErrDamaged = errors.New("snapshot damaged")

func damaged(sn api.Snapshot, why string) error {
	return fmt.Errorf("%w: snapshot %q: %s: remove it with `banger snapshot rm %s` and take it again", ErrDamaged, sn.Name, why, sn.Name)
}

// ErrIncompatible means a snapshot was made by another VMM or version.
var ErrIncompatible = errors.New("snapshot incompatible")

// Compatible reports whether a VMM of kind and version can load sn:
// device state is only read back by the VMM that wrote it.
func Compatible(sn api.Snapshot, kind, version string) error {
	if sn.VMM != kind {
		return fmt.Errorf("%w: snapshot %q was made by %s, this VM would run on %s: fork it with --vmm %s", ErrIncompatible, sn.Name, sn.VMM, kind, sn.VMM)
	}
	if sn.VMMVersion != version {
		return fmt.Errorf("%w: snapshot %q was made by %s %s, this host has %s %s: take the snapshot again", ErrIncompatible, sn.Name, sn.VMM, sn.VMMVersion, kind, version)
	}
	return nil
}

// Key is a warm template's key: everything a restored VM inherits from
// its template and cannot change afterwards, and its owner: a template
// holds its first VM's memory, so it serves only VMs of the same user
// that agree on all of it.
func Key(owner int, vmmKind, vmmVersion, imageDigest, kernelID, agentHash string, vcpu, memoryMiB int, diskBytes int64, network string) string {
	h := sha256.Sum256([]byte(strings.Join([]string{fmt.Sprint(owner), vmmKind, vmmVersion, imageDigest, kernelID, agentHash,
		fmt.Sprint(vcpu), fmt.Sprint(memoryMiB), fmt.Sprint(diskBytes), network}, "\x00")))
	return hex.EncodeToString(h[:8])
}
