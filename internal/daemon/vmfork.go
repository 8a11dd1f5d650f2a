package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/hostnet"
	"banger/internal/snapshot"
	"banger/internal/store"
	"banger/internal/vm"
	"banger/internal/vmm"
	"banger/internal/vsockagent"
)

// This file is `vm fork`: new VMs restored from a snapshot (or from a
// running VM, snapshotted for the purpose), each with its own disk,
// memory, name, address and keys.

// handleFork is POST /v1/vms/fork: it answers with the new VMs.
func (d *Daemon) handleFork(w http.ResponseWriter, r *http.Request) error {
	var req api.ForkRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.Count == 0 {
		req.Count = 1
	}
	if req.Count < 1 || req.Count > 32 {
		return fmt.Errorf("%w: -n %d: fork 1 to 32 VMs at once", errInvalid, req.Count)
	}
	ctx := r.Context()
	sn, temporary, err := d.forkSource(ctx, req.Source)
	if err != nil {
		return err
	}
	if temporary {
		// Forks are copies: the snapshot taken for them can go at once.
		defer d.dropSnapshot(context.Background(), sn, "taken for a fork")
	}
	var out []api.VM
	var made []string
	for i := 1; i <= req.Count; i++ {
		name := req.Name
		if name != "" && req.Count > 1 {
			name += "-" + strconv.Itoa(i)
		}
		v, err := d.forkOne(ctx, sn, name)
		if err != nil {
			if len(made) > 0 {
				return fmt.Errorf("%w (fork %d of %d; made: %s)", err, i, req.Count, strings.Join(made, ", "))
			}
			return err
		}
		out = append(out, *v)
		made = append(made, v.Name)
	}
	writeJSON(w, http.StatusCreated, out)
	return nil
}

// forkSource is the snapshot named source, or a snapshot just taken of
// the running VM named source (temporary: the caller drops it).
func (d *Daemon) forkSource(ctx context.Context, source string) (api.Snapshot, bool, error) {
	if source == "" {
		return api.Snapshot{}, false, fmt.Errorf("%w: fork what? name a snapshot or a running VM", errInvalid)
	}
	if sn, err := d.store.Snapshot(ctx, source); err == nil {
		return sn, false, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return sn, false, err
	}
	unlock := d.vmLock(source)
	defer unlock()
	v, err := d.store.VM(ctx, source)
	if errors.Is(err, store.ErrNotFound) {
		return api.Snapshot{}, false, fmt.Errorf("%w: no snapshot or VM named %q: list them with `banger snapshot ls` and `banger vm ls`", store.ErrNotFound, source)
	}
	if err != nil {
		return api.Snapshot{}, false, err
	}
	if s := vm.State(v.State); s != vm.Running && s != vm.Paused {
		return api.Snapshot{}, false, fmt.Errorf("%w: cannot fork a VM that is %s: start it with `banger vm start %s`, or fork one of its snapshots", vm.ErrInvalidState, s, v.Name)
	}
	sn, err := d.takeSnapshot(ctx, v, "fork-of-"+v.Name+"-"+newID()[:8], api.SnapshotKindSnapshot, "")
	return sn, err == nil, err
}

// restorable checks that sn can be restored on this host now: its
// files are intact, the VMM that wrote it is the one here, and its image
// and kernel are the very ones it was taken with (the guest's page cache
// holds blocks of that image file).
func (d *Daemon) restorable(ctx context.Context, sn api.Snapshot) (vmmBackend, error) {
	if err := snapshot.Verify(sn); err != nil {
		return vmmBackend{}, err
	}
	_, b, err := d.backend(sn.VMM)
	if err != nil {
		return b, err
	}
	if b.restore == nil {
		return b, fmt.Errorf("%w: restoring snapshots on %s", vmm.ErrNotSupported, sn.VMM)
	}
	version, err := d.vmmVersion(ctx, sn.VMM)
	if err != nil {
		return b, err
	}
	if err := snapshot.Compatible(sn, sn.VMM, version); err != nil {
		return b, err
	}
	if img, err := d.store.Image(ctx, sn.Image); err != nil || img.ID != sn.ImageID {
		return b, fmt.Errorf("%w: image %q, which snapshot %q was taken from, was removed or pulled again since: the snapshot cannot be restored; remove it with `banger snapshot rm %s`", snapshot.ErrIncompatible, sn.Image, sn.Name, sn.Name)
	}
	if k, err := d.store.Kernel(ctx, sn.Kernel); err != nil || k.ID != sn.KernelID {
		return b, fmt.Errorf("%w: kernel %q, which snapshot %q was taken with, was removed or imported again since: the snapshot cannot be restored; remove it with `banger snapshot rm %s`", snapshot.ErrIncompatible, sn.Kernel, sn.Name, sn.Name)
	}
	return b, nil
}

// forkOne makes one VM restored from sn.
func (d *Daemon) forkOne(ctx context.Context, sn api.Snapshot, name string) (*api.VM, error) {
	if _, err := d.restorable(ctx, sn); err != nil {
		return nil, err
	}
	v, unlock, err := d.newVMRecord(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	mode := hostnet.Mode(sn.Network)
	alloc, err := d.prepareNet(mode, nil)
	if err != nil {
		return nil, err
	}
	v.Image, v.Kernel, v.VMM, v.VCPU, v.MemoryMiB, v.DiskBytes, v.Network = sn.Image, sn.Kernel, sn.VMM, sn.VCPU, sn.MemoryMiB, sn.DiskBytes, sn.Network
	v.Origin = "snapshot " + sn.Name
	hostKey, err := d.restoredDisk(v, sn)
	if err != nil {
		return nil, err
	}
	v.CreatedAt = time.Now().UTC()
	if err := d.store.InsertVM(ctx, &v, alloc); err != nil {
		os.RemoveAll(v.Dir)
		return nil, err
	}
	d.log.Info("vm created", "vm", v.Name, "from_snapshot", sn.Name)
	return d.launchVMLocked(v, &restoreFrom{snap: sn, hostKey: hostKey}, "", nil)
}

// newVMRecord is a new VM's id, name (generated when empty) and
// directory path, with the name's lock held (the caller unlocks). The
// name must be free.
func (d *Daemon) newVMRecord(ctx context.Context, name string) (api.VM, func(), error) {
	if name == "" {
		for i := 0; i < 10; i++ {
			name = vm.GenerateName()
			if _, err := d.store.VM(ctx, name); errors.Is(err, store.ErrNotFound) {
				break
			}
		}
	}
	if err := vm.ValidateName(name); err != nil {
		return api.VM{}, nil, fmt.Errorf("%w: %v", errInvalid, err)
	}
	unlock := d.vmLock(name)
	if _, err := d.store.VM(ctx, name); err == nil {
		unlock()
		return api.VM{}, nil, fmt.Errorf("%w: VM %q exists: pick another --name or remove it with `banger vm rm %s`", store.ErrExists, name, name)
	}
	id := newID()
	return api.VM{ID: id, Name: name, State: string(vm.Created), Dir: d.layout.VMDir(id), Ports: []string{}}, unlock, nil
}

// restoredDisk makes v's directory with its own copy of sn's writable
// disk (a reflink or sparse copy) and its own SSH host key, and returns
// the private key for the guest (the disk holds the source's). On error
// nothing is left.
func (d *Daemon) restoredDisk(v api.VM, sn api.Snapshot) ([]byte, error) {
	if err := os.MkdirAll(v.Dir, vmDirMode); err != nil {
		return nil, err
	}
	seed, err := d.sshSeed(v)
	if err != nil {
		os.RemoveAll(v.Dir)
		return nil, err
	}
	if _, err := vmm.CopyFile(filepath.Join(v.Dir, vm.DataDisk), filepath.Join(sn.Dir, snapshot.DiskFile)); err != nil {
		os.RemoveAll(v.Dir)
		return nil, fmt.Errorf("copying snapshot %q's disk for VM %q: %w", sn.Name, v.Name, err)
	}
	return seed[vsockagent.SSHHostKeyPath], nil
}
