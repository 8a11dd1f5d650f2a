package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/kernel"
	"banger/internal/paths"
	"banger/internal/snapshot"
	"banger/internal/store"
	"banger/internal/system"
	"banger/internal/vm"
	"banger/internal/vmm"
)

// This file is snapshots as the API sees them: taking one of a VM,
// listing, showing and removing them, and what they must agree on with
// the host (the VMM's version, the guest agent) to be restored.

var snapshotNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// snapshotState holds what is probed once per daemon for snapshots.
type snapshotState struct {
	mu        sync.Mutex
	versions  map[string]string // VMM kind → its binary's version
	agentKey  string            // agent path, size and mtime the hash is for
	agentHash string
}

// vmmVersion is the version of the VMM binary of kind, from its
// --version output (asked once per daemon).
func (d *Daemon) vmmVersion(ctx context.Context, kind string) (string, error) {
	d.snaps.mu.Lock()
	v, ok := d.snaps.versions[kind]
	d.snaps.mu.Unlock()
	if ok {
		return v, nil
	}
	_, b, err := d.backend(kind)
	if err != nil {
		return "", err
	}
	out, err := d.opts.Runner.Run(ctx, b.bin, "--version")
	if err != nil {
		return "", fmt.Errorf("asking %s its version: %w", b.bin, err)
	}
	if v = vmm.ParseVersion(string(out)); v == "" {
		return "", fmt.Errorf("%s --version said %q: no version in it", b.bin, system.Tail(string(out), 100))
	}
	d.snaps.mu.Lock()
	if d.snaps.versions == nil {
		d.snaps.versions = map[string]string{}
	}
	d.snaps.versions[kind] = v
	d.snaps.mu.Unlock()
	return v, nil
}

// agentHash is the sha256 of the guest agent this daemon injects: a
// template made with another agent would restore that agent.
func (d *Daemon) agentHash() (string, error) {
	p, err := paths.GuestAgentBinary()
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s %d %d", p, fi.Size(), fi.ModTime().UnixNano())
	d.snaps.mu.Lock()
	defer d.snaps.mu.Unlock()
	if d.snaps.agentKey != key {
		h, err := kernel.HashFile(p)
		if err != nil {
			return "", err
		}
		d.snaps.agentKey, d.snaps.agentHash = key, h
	}
	return d.snaps.agentHash, nil
}

// takeSnapshot captures the live VM v (its lock held) as a snapshot
// named name. The guest is frozen only while memory, device state and
// disk are written; whatever happens it runs on afterwards (a paused VM
// stays paused). A failed snapshot leaves no record and no files.
func (d *Daemon) takeSnapshot(ctx context.Context, v api.VM, name, kind, templateKey string) (api.Snapshot, error) {
	if hasMount(v.Mounts, api.MountSync) {
		// A fork would carry the copy, but no sync: two VMs writing
		// one host directory through stale bases.
		return api.Snapshot{}, fmt.Errorf("%w: VM %q has synced mounts (-v): a snapshot or fork of it would not be synced; make one without -v to snapshot or fork it", vm.ErrInvalidState, v.Name)
	}
	if len(v.Mounts) > 0 {
		// QEMU 7.2 blocks migration of vhost-user-fs devices, and a
		// restored guest would hold file handles of another virtiofsd.
		return api.Snapshot{}, fmt.Errorf("%w: VM %q shares host directories (-v): QEMU cannot snapshot a VM with virtio-fs devices; make one without -v to snapshot or fork it", vm.ErrInvalidState, v.Name)
	}
	m := d.machine(v.ID)
	if m == nil {
		return api.Snapshot{}, fmt.Errorf("%w: VM %q runs, but this daemon has no handle on its VMM (it did not answer after a restart): restart the VM to snapshot it", errConflict, v.Name)
	}
	img, err := d.store.Image(ctx, v.Image)
	if err != nil {
		return api.Snapshot{}, withHint(err, "the VM's image is gone: a snapshot of it could never be restored")
	}
	k, err := d.store.Kernel(ctx, v.Kernel)
	if err != nil {
		return api.Snapshot{}, withHint(err, "the VM's kernel is gone: a snapshot of it could never be restored")
	}
	version, err := d.vmmVersion(ctx, v.VMM)
	if err != nil {
		return api.Snapshot{}, err
	}
	agent, err := d.agentHash()
	if err != nil {
		return api.Snapshot{}, err
	}
	id := newID()
	sn := api.Snapshot{ID: id, Name: name, Kind: kind, State: string(snapshot.Creating), SourceVM: v.Name,
		Image: img.Name, ImageID: img.ID, ImageDigest: img.Digest, Kernel: k.Name, KernelID: k.ID, AgentHash: agent,
		VMM: v.VMM, VMMVersion: version, VCPU: v.VCPU, MemoryMiB: v.MemoryMiB, DiskBytes: v.DiskBytes, Network: v.Network,
		TemplateKey: templateKey, Dir: d.layout.SnapshotDir(id)}
	if err := d.store.InsertSnapshot(ctx, &sn); err != nil {
		if errors.Is(err, store.ErrExists) {
			return sn, fmt.Errorf("%w: snapshot %q exists: pick another --name or remove it with `banger snapshot rm %s`", store.ErrExists, name, name)
		}
		return sn, err
	}
	// The record first, then the files: a crash in between leaves a
	// record in state creating, which the next start removes with its
	// directory.
	fail := func(err error) (api.Snapshot, error) {
		os.RemoveAll(sn.Dir)
		d.store.DeleteSnapshot(context.Background(), name)
		return api.Snapshot{}, err
	}
	if err := os.MkdirAll(sn.Dir, 0o700); err != nil {
		return fail(err)
	}
	if v.State == string(vm.Running) {
		// Capture freezes the guest while it saves it.
		d.agentPaused(v.ID, true)
		defer d.agentPaused(v.ID, false)
	}
	files, st, err := snapshot.Capture(ctx, m, filepath.Join(v.Dir, vm.DataDisk), sn.Dir, v.State == string(vm.Paused))
	if err != nil {
		d.log.Warn("snapshot failed", "vm", v.Name, "snapshot", name, "err", err)
		hint := ""
		if noSpace(err) {
			// QEMU's own migration failure reaches us as text only.
			hint = fmt.Sprintf(": free space under %s (a snapshot needs about the guest's used memory plus its disk's data), or remove old ones with `banger snapshot rm`", d.layout.SnapshotsDir())
		}
		return fail(fmt.Errorf("snapshot of VM %q: %w (the VM runs on; nothing was kept)%s", v.Name, err, hint))
	}
	next, err := snapshot.Next(snapshot.State(sn.State), snapshot.EvWritten)
	if err != nil {
		return fail(err)
	}
	sn.State, sn.Files, sn.SizeBytes, sn.PausedMs = string(next), files, snapshot.Size(files), st.Paused.Milliseconds()
	if err := d.store.UpdateSnapshot(ctx, sn); err != nil {
		return fail(err)
	}
	d.log.Info("snapshot taken", "vm", v.Name, "snapshot", name, "kind", kind, "size", sn.SizeBytes, "stages", st.String())
	return sn, nil
}

// noSpace reports whether err is a full file system, as an errno or in
// a VMM's words.
func noSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || strings.Contains(strings.ToLower(err.Error()), "no space left")
}

// handleSnapshotVM is POST /v1/vms/{name}/snapshot.
func (d *Daemon) handleSnapshotVM(w http.ResponseWriter, r *http.Request) error {
	var req api.SnapshotRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	name := r.PathValue("name")
	unlock := d.vmLock(name)
	defer unlock()
	v, err := d.store.VM(r.Context(), name)
	if err != nil {
		return vmHint(err)
	}
	if s := vm.State(v.State); s != vm.Running && s != vm.Paused {
		return fmt.Errorf("%w: cannot snapshot a VM that is %s: start it with `banger vm start %s`", vm.ErrInvalidState, s, name)
	}
	if req.Name == "" {
		req.Name = v.Name + "-" + time.Now().UTC().Format("20060102-150405")
	}
	if !snapshotNameRE.MatchString(req.Name) {
		return fmt.Errorf("%w: snapshot name %q: use lowercase letters, digits, '.', '_' and '-' (at most 63), starting with a letter or digit", errInvalid, req.Name)
	}
	sn, err := d.takeSnapshot(r.Context(), v, req.Name, api.SnapshotKindSnapshot, "")
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, sn)
	return nil
}

// handleRemoveSnapshot is DELETE /v1/snapshots/{name}. VMs made from it
// keep running: their disks and memory are their own copies.
func (d *Daemon) handleRemoveSnapshot(w http.ResponseWriter, r *http.Request) error {
	sn, err := d.store.Snapshot(r.Context(), r.PathValue("name"))
	if err != nil {
		return withHint(err, "list snapshots with `banger snapshot ls`")
	}
	if _, err := snapshot.Next(snapshot.State(sn.State), snapshot.EvRemove); err != nil {
		return fmt.Errorf("snapshot %q: %w", sn.Name, err)
	}
	if err := d.dropSnapshot(r.Context(), sn, "removed"); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sn)
	return nil
}

// dropSnapshot removes a snapshot's record, then its files.
func (d *Daemon) dropSnapshot(ctx context.Context, sn api.Snapshot, why string) error {
	if _, err := d.store.DeleteSnapshot(ctx, sn.Name); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if err := os.RemoveAll(sn.Dir); err != nil {
		d.log.Warn("removing snapshot files", "snapshot", sn.Name, "err", err)
	}
	d.log.Info("snapshot removed", "snapshot", sn.Name, "kind", sn.Kind, "why", why)
	return nil
}

// dropTemplates removes the warm templates match selects: a template
// made from an image, kernel or agent that changed would restore what
// is no longer there.
func (d *Daemon) dropTemplates(ctx context.Context, why string, match func(api.Snapshot) bool) {
	sns, err := d.store.Snapshots(ctx)
	if err != nil {
		d.log.Warn("listing templates", "err", err)
		return
	}
	for _, sn := range sns {
		if sn.Kind == api.SnapshotKindTemplate && match(sn) {
			d.dropSnapshot(ctx, sn, why)
		}
	}
}

// reconcileSnapshots runs at daemon start: snapshots whose writing was
// interrupted go, so do templates of images, kernels or an agent that
// are not there any more, directories without a record, and RAM files
// of VMs that do not run.
func (d *Daemon) reconcileSnapshots(ctx context.Context) error {
	sns, err := d.store.Snapshots(ctx)
	if err != nil {
		return err
	}
	agent, _ := d.agentHash()
	known := map[string]bool{}
	for _, sn := range sns {
		switch {
		case sn.State == string(snapshot.Creating):
			d.dropSnapshot(ctx, sn, "interrupted: bangerd stopped while it was being written")
			continue
		case sn.Kind == api.SnapshotKindTemplate && agent != "" && sn.AgentHash != agent:
			d.dropTemplates(ctx, "the guest agent changed", func(s api.Snapshot) bool { return s.Name == sn.Name })
			continue
		case sn.Kind == api.SnapshotKindTemplate && !d.templateSourcesExist(ctx, sn):
			d.dropTemplates(ctx, "its image or kernel was removed", func(s api.Snapshot) bool { return s.Name == sn.Name })
			continue
		}
		known[sn.ID] = true
	}
	os.MkdirAll(d.layout.SnapshotsDir(), 0o755)
	if err := removeLeftovers(d, d.layout.SnapshotsDir(), known); err != nil {
		return err
	}
	vms, err := d.store.VMs(ctx)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, v := range vms {
		if vm.State(v.State).Live() {
			live[v.ID+".ram"] = true
		}
	}
	if _, err := os.Stat(d.layout.RAMDir()); err == nil {
		return removeLeftovers(d, d.layout.RAMDir(), live)
	}
	return nil
}

func (d *Daemon) templateSourcesExist(ctx context.Context, sn api.Snapshot) bool {
	img, err := d.store.Image(ctx, sn.Image)
	if err != nil || img.ID != sn.ImageID {
		return false
	}
	k, err := d.store.Kernel(ctx, sn.Kernel)
	return err == nil && k.ID == sn.KernelID
}
