package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/hostnet"
	"banger/internal/snapshot"
	"banger/internal/store"
	"banger/internal/vmm"
	"banger/internal/vsockagent"
)

// This file is `vm fork`: new VMs restored from a snapshot (or from a
// running VM, snapshotted for the purpose), each with its own disk,
// memory, name, address and keys.

// Fork makes req.Count VMs restored from a snapshot, or from a running
// VM snapshotted for the purpose (that snapshot is dropped after), and
// returns them running. Each has its own name, disk, address and keys;
// their memory maps the snapshot's copy-on-write. They are made side by
// side: only recording each (name, address) and the network's rules go
// one at a time. When some fail, the others are made all the same, and
// the error says which failed and which were made.
// The forks are c's, whoever owned the source: c may fork only their own
// snapshots and VMs (an admin, any).
func (s *Service) Fork(ctx context.Context, c Caller, req api.ForkRequest) ([]api.VM, error) {
	if req.Count == 0 {
		req.Count = 1
	}
	if req.Count < 1 || req.Count > 32 {
		return nil, fmt.Errorf("%w: -n %d: fork 1 to 32 VMs at once", api.ErrInvalid, req.Count)
	}
	sn, temporary, err := s.forkSource(ctx, c, req.Source)
	if err != nil {
		return nil, err
	}
	if temporary {
		// Forks are copies: the snapshot taken for them can go at once.
		defer s.dropSnapshot(context.Background(), sn, "taken for a fork")
	}
	vms := make([]*api.VM, req.Count)
	errs := make([]error, req.Count)
	var wg sync.WaitGroup
	for i := range req.Count {
		name := req.Name
		if name != "" && req.Count > 1 {
			name += "-" + strconv.Itoa(i+1)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i], errs[i] = s.forkOne(ctx, c, sn, name, req.Labels)
		}()
	}
	wg.Wait()
	var out []api.VM
	var made []string
	var first error
	failed, at := 0, 0
	for i, v := range vms {
		if errs[i] != nil {
			if first == nil {
				first, at = errs[i], i+1
			}
			failed++
			continue
		}
		out = append(out, *v)
		made = append(made, v.Name)
	}
	switch {
	case first == nil:
		return out, nil
	case req.Count == 1:
		return nil, first
	case len(made) == 0:
		return nil, fmt.Errorf("%w (all %d forks failed; the first error is fork %d's)", first, req.Count, at)
	}
	return nil, fmt.Errorf("%w (fork %d of %d; %d failed; made: %s)", first, at, req.Count, failed, strings.Join(made, ", "))
}

// forkSource is the snapshot named source, or a snapshot just taken of
// the running VM named source (temporary: the caller drops it).
func (s *Service) forkSource(ctx context.Context, c Caller, source string) (api.Snapshot, bool, error) {
	if source == "" {
		return api.Snapshot{}, false, fmt.Errorf("%w: fork what? name a snapshot or a running VM", api.ErrInvalid)
	}
	if sn, err := s.lookupSnapshot(ctx, c, source); err == nil {
		return sn, false, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return sn, false, err
	}
	v, unlock, err := s.lockOwn(ctx, c, source)
	if errors.Is(err, store.ErrNotFound) {
		if c.Admin {
			return api.Snapshot{}, false, fmt.Errorf("%w: no snapshot or VM named %q: list them with `banger snapshot ls` and `banger vm ls`", store.ErrNotFound, source)
		}
		return api.Snapshot{}, false, fmt.Errorf("%w: no snapshot or VM %q of yours: list yours with `banger snapshot ls` and `banger vm ls`", store.ErrNotFound, source)
	}
	if err != nil {
		return api.Snapshot{}, false, err
	}
	defer unlock()
	if s := State(v.State); s != Running && s != Paused {
		return api.Snapshot{}, false, fmt.Errorf("%w: cannot fork a VM that is %s: start it with `banger vm start %s`, or fork one of its snapshots", ErrInvalidState, s, v.Name)
	}
	sn, err := s.takeSnapshot(ctx, v, c.UID, "fork-of-"+v.Name+"-"+store.NewID()[:8], api.SnapshotKindSnapshot, "")
	return sn, err == nil, err
}

// restorable checks that sn can be restored on this host now: its
// files are intact, the VMM that wrote it is the one here, and its image
// and kernel are the very ones it was taken with (the guest's page cache
// holds blocks of that image file).
func (s *Service) restorable(ctx context.Context, sn api.Snapshot) (Backend, error) {
	if err := snapshot.Verify(sn); err != nil {
		return nil, err
	}
	_, b, err := s.backends.Pick(sn.VMM)
	if err != nil {
		return b, err
	}
	if b.Restorer() == nil {
		return b, fmt.Errorf("%w: restoring snapshots on %s", vmm.ErrNotSupported, sn.VMM)
	}
	version, err := s.vmmVersion(ctx, sn.VMM)
	if err != nil {
		return b, err
	}
	if err := snapshot.Compatible(sn, sn.VMM, version); err != nil {
		return b, err
	}
	if img, err := s.store.Image(ctx, sn.Image); err != nil || img.ID != sn.ImageID {
		return b, fmt.Errorf("%w: image %q, which snapshot %q was taken from, was removed or pulled again since: the snapshot cannot be restored; remove it with `banger snapshot rm %s`", snapshot.ErrIncompatible, sn.Image, sn.Name, sn.Name)
	}
	if k, err := s.store.Kernel(ctx, sn.Kernel); err != nil || k.ID != sn.KernelID {
		return b, fmt.Errorf("%w: kernel %q, which snapshot %q was taken with, was removed or imported again since: the snapshot cannot be restored; remove it with `banger snapshot rm %s`", snapshot.ErrIncompatible, sn.Kernel, sn.Name, sn.Name)
	}
	return b, nil
}

// forkOne makes one VM restored from sn, labelled labels.
func (s *Service) forkOne(ctx context.Context, c Caller, sn api.Snapshot, name string, labels map[string]string) (*api.VM, error) {
	// sn's files stay until the restore has them open (see restores.go).
	unlockSnap := s.snapshotLock(sn.ID, false)
	defer unlockSnap()
	if _, err := s.restorable(ctx, sn); err != nil {
		return nil, err
	}
	v, unlock, err := s.newVMRecord(ctx, c, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	mode := hostnet.Mode(sn.Network)
	alloc, err := s.net.Prepare(mode, nil)
	if err != nil {
		return nil, err
	}
	v.Image, v.Kernel, v.VMM, v.VCPU, v.MemoryMiB, v.DiskBytes, v.Network = sn.Image, sn.Kernel, sn.VMM, sn.VCPU, sn.MemoryMiB, sn.DiskBytes, sn.Network
	v.Origin = "snapshot " + sn.Name
	v.Labels = labels
	// A fork is as confined as the VM it was taken from.
	v.Policy = sn.Policy
	release, err := s.admit(ctx, c, v, true)
	if err != nil {
		return nil, err
	}
	defer release()
	hostKey, err := s.restoredDisk(v, sn)
	if err != nil {
		return nil, err
	}
	v.CreatedAt = time.Now().UTC()
	if err := s.store.InsertVM(ctx, &v, alloc); err != nil {
		os.RemoveAll(v.Dir)
		return nil, err
	}
	s.log.Info("vm created", "vm", v.Name, "from_snapshot", sn.Name)
	return s.launchVMLocked(v, &restoreFrom{snap: sn, hostKey: hostKey}, "", nil)
}

// newVMRecord is a new VM's id, name (generated when empty) and
// directory path, with the name's lock held (the caller unlocks). The
// name must be free.
func (s *Service) newVMRecord(ctx context.Context, c Caller, name string) (api.VM, func(), error) {
	generated := name == ""
	for i := 0; generated && i < 10; i++ {
		name = GenerateName()
		if _, err := s.store.VM(ctx, name); !errors.Is(err, store.ErrNotFound) {
			continue
		}
		// Another create may have drawn the same name just now and
		// hold it, not yet recorded.
		if unlock, ok := s.tryVMLock(name); ok {
			if _, err := s.store.VM(ctx, name); errors.Is(err, store.ErrNotFound) {
				return s.newVM(c, name), unlock, nil
			}
			unlock()
		}
	}
	if err := ValidateName(name); err != nil {
		return api.VM{}, nil, fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	unlock := s.vmLock(name)
	if v, err := s.store.VM(ctx, name); err == nil {
		unlock()
		return api.VM{}, nil, takenName(c, "VM", v.Owner, name, "banger vm rm")
	}
	return s.newVM(c, name), unlock, nil
}

// newVM is a new VM record's start: id, name, directory, owner.
func (s *Service) newVM(c Caller, name string) api.VM {
	id := store.NewID()
	return api.VM{ID: id, Name: name, State: string(Created), Dir: s.layout.VMDir(id), Ports: []string{}, Owner: c.UID}
}

// restoredDisk makes v's directory with its own copy of sn's writable
// disk (a reflink or sparse copy) and its own SSH host key, and returns
// the private key for the guest (the disk holds the source's). On error
// nothing is left.
func (s *Service) restoredDisk(v api.VM, sn api.Snapshot) ([]byte, error) {
	if err := os.MkdirAll(v.Dir, vmDirMode); err != nil {
		return nil, err
	}
	seed, err := s.sshSeed(v)
	if err != nil {
		os.RemoveAll(v.Dir)
		return nil, err
	}
	if _, err := vmm.CopyFile(filepath.Join(v.Dir, DataDisk), filepath.Join(sn.Dir, snapshot.DiskFile)); err != nil {
		os.RemoveAll(v.Dir)
		hint := ""
		if noSpace(err) {
			hint = fmt.Sprintf(": free space under %s (remove VMs or snapshots you no longer need) and try again", s.layout.VMsDir())
		}
		return nil, fmt.Errorf("copying snapshot %q's disk for VM %q: %w%s", sn.Name, v.Name, err, hint)
	}
	return seed[vsockagent.SSHHostKeyPath], nil
}
