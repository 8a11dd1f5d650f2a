package vm

import (
	"context"
	"errors"
	"fmt"
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
func (s *Service) vmmVersion(ctx context.Context, kind string) (string, error) {
	s.snaps.mu.Lock()
	v, ok := s.snaps.versions[kind]
	s.snaps.mu.Unlock()
	if ok {
		return v, nil
	}
	_, b, err := s.backends.Pick(kind)
	if err != nil {
		return "", err
	}
	if v, err = b.Version(ctx); err != nil {
		return "", err
	}
	s.snaps.mu.Lock()
	if s.snaps.versions == nil {
		s.snaps.versions = map[string]string{}
	}
	s.snaps.versions[kind] = v
	s.snaps.mu.Unlock()
	return v, nil
}

// agentHash is the sha256 of the guest agent this daemon injects: a
// template made with another agent would restore that agent.
func (s *Service) agentHash() (string, error) {
	p, err := paths.GuestAgentBinary()
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s %d %d", p, fi.Size(), fi.ModTime().UnixNano())
	s.snaps.mu.Lock()
	defer s.snaps.mu.Unlock()
	if s.snaps.agentKey != key {
		h, err := kernel.HashFile(p)
		if err != nil {
			return "", err
		}
		s.snaps.agentKey, s.snaps.agentHash = key, h
	}
	return s.snaps.agentHash, nil
}

// takeSnapshot captures the live VM v (its lock held) as a snapshot
// named name. The guest is frozen only while memory, device state and
// disk are written; whatever happens it runs on afterwards (a paused VM
// stays paused). A failed snapshot leaves no record and no files.
func (s *Service) takeSnapshot(ctx context.Context, v api.VM, owner int, name, kind, templateKey string) (api.Snapshot, error) {
	if hasMount(v.Mounts, api.MountSync) {
		// A fork would carry the copy, but no sync: two VMs writing
		// one host directory through stale bases.
		return api.Snapshot{}, fmt.Errorf("%w: VM %q has synced mounts (-v): a snapshot or fork of it would not be synced; make one without -v to snapshot or fork it", ErrInvalidState, v.Name)
	}
	if len(v.Mounts) > 0 {
		// QEMU 7.2 blocks migration of vhost-user-fs devices, and a
		// restored guest would hold file handles of another virtiofsd.
		return api.Snapshot{}, fmt.Errorf("%w: VM %q shares host directories (-v): QEMU cannot snapshot a VM with virtio-fs devices; make one without -v to snapshot or fork it", ErrInvalidState, v.Name)
	}
	m := s.machine(v.ID)
	if m == nil {
		return api.Snapshot{}, fmt.Errorf("%w: VM %q runs, but this daemon has no handle on its VMM (it did not answer after a restart): restart the VM to snapshot it", api.ErrConflict, v.Name)
	}
	img, err := s.store.Image(ctx, v.Image)
	if err != nil {
		return api.Snapshot{}, store.Hint(err, "the VM's image is gone: a snapshot of it could never be restored")
	}
	k, err := s.store.Kernel(ctx, v.Kernel)
	if err != nil {
		return api.Snapshot{}, store.Hint(err, "the VM's kernel is gone: a snapshot of it could never be restored")
	}
	version, err := s.vmmVersion(ctx, v.VMM)
	if err != nil {
		return api.Snapshot{}, err
	}
	agent, err := s.agentHash()
	if err != nil {
		return api.Snapshot{}, err
	}
	id := store.NewID()
	sn := api.Snapshot{ID: id, Name: name, Kind: kind, State: string(snapshot.Creating), SourceVM: v.Name,
		Image: img.Name, ImageID: img.ID, ImageDigest: img.Digest, Kernel: k.Name, KernelID: k.ID, AgentHash: agent,
		VMM: v.VMM, VMMVersion: version, VCPU: v.VCPU, MemoryMiB: v.MemoryMiB, DiskBytes: v.DiskBytes, Network: v.Network,
		TemplateKey: templateKey, Dir: s.layout.SnapshotDir(id), Owner: owner, Policy: v.Policy}
	if err := s.store.InsertSnapshot(ctx, &sn); err != nil {
		if errors.Is(err, store.ErrExists) {
			other, _ := s.store.Snapshot(ctx, name)
			return sn, takenName(Caller{UID: owner}, "snapshot", other.Owner, name, "banger snapshot rm")
		}
		return sn, err
	}
	// The record first, then the files: a crash in between leaves a
	// record in state creating, which the next start removes with its
	// directory.
	fail := func(err error) (api.Snapshot, error) {
		os.RemoveAll(sn.Dir)
		s.store.DeleteSnapshot(context.Background(), name)
		return api.Snapshot{}, err
	}
	if err := os.MkdirAll(sn.Dir, 0o700); err != nil {
		return fail(err)
	}
	if v.State == string(Running) {
		// Capture freezes the guest while it saves it.
		s.agentPaused(v.ID, true)
		defer s.agentPaused(v.ID, false)
	}
	files, st, err := snapshot.Capture(ctx, m, filepath.Join(v.Dir, DataDisk), sn.Dir, v.State == string(Paused))
	if err != nil {
		s.log.Warn("snapshot failed", "vm", v.Name, "snapshot", name, "err", err)
		hint := ""
		if noSpace(err) {
			// QEMU's own migration failure reaches us as text only.
			hint = fmt.Sprintf(": free space under %s (a snapshot needs about the guest's used memory plus its disk's data), or remove old ones with `banger snapshot rm`", s.layout.SnapshotsDir())
		}
		return fail(fmt.Errorf("snapshot of VM %q: %w (the VM runs on; nothing was kept)%s", v.Name, err, hint))
	}
	next, err := snapshot.Next(snapshot.State(sn.State), snapshot.EvWritten)
	if err != nil {
		return fail(err)
	}
	sn.State, sn.Files, sn.SizeBytes, sn.PausedMs = string(next), files, snapshot.Size(files), st.Paused.Milliseconds()
	if err := s.store.UpdateSnapshot(ctx, sn); err != nil {
		return fail(err)
	}
	s.log.Info("snapshot taken", "vm", v.Name, "snapshot", name, "kind", kind, "size", sn.SizeBytes, "stages", st.String())
	return sn, nil
}

// noSpace reports whether err is a full file system, as an errno or in
// a VMM's words.
func noSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || strings.Contains(strings.ToLower(err.Error()), "no space left")
}

// Snapshot captures the running (or paused) VM name as a snapshot:
// memory, devices and disk at one instant. The guest is frozen only
// while they are written, and runs on after.
// The snapshot is c's.
func (s *Service) Snapshot(ctx context.Context, c Caller, name string, req api.SnapshotRequest) (api.Snapshot, error) {
	v, unlock, err := s.lockOwn(ctx, c, name)
	if err != nil {
		return api.Snapshot{}, err
	}
	defer unlock()
	if st := State(v.State); st != Running && st != Paused {
		return api.Snapshot{}, fmt.Errorf("%w: cannot snapshot a VM that is %s: start it with `banger vm start %s`", ErrInvalidState, st, name)
	}
	if req.Name == "" {
		req.Name = v.Name + "-" + time.Now().UTC().Format("20060102-150405")
	}
	if !snapshotNameRE.MatchString(req.Name) {
		return api.Snapshot{}, fmt.Errorf("%w: snapshot name %q: use lowercase letters, digits, '.', '_' and '-' (at most 63), starting with a letter or digit", api.ErrInvalid, req.Name)
	}
	return s.takeSnapshot(ctx, v, c.UID, req.Name, api.SnapshotKindSnapshot, "")
}

// GetSnapshot is c's snapshot (or template) named name, with the
// running VMs that use it.
func (s *Service) GetSnapshot(ctx context.Context, c Caller, name string) (api.Snapshot, error) {
	sn, err := s.lookupSnapshot(ctx, c, name)
	if err != nil {
		return sn, err
	}
	sn.OwnerName = OwnerName(sn.Owner)
	byFile, err := s.mappedFiles(ctx)
	return withUsers(c, byFile, sn), err
}

// Snapshots lists the snapshots and templates c may see (an admin: all).
func (s *Service) Snapshots(ctx context.Context, c Caller) ([]api.Snapshot, error) {
	sns, err := s.store.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	byFile, err := s.mappedFiles(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.Snapshot{}
	for _, sn := range sns {
		if c.sees(sn.Owner) {
			sn.OwnerName = OwnerName(sn.Owner)
			out = append(out, withUsers(c, byFile, sn))
		}
	}
	return out, nil
}

// RemoveSnapshot removes c's snapshot name: its record and name at
// once, and its files, whose space comes back once no VM maps them. VMs
// restored from it keep running: each has its own disk, and the kernel
// keeps the memory file their RAM maps copy-on-write until the last of
// them stops (see restores.go). The snapshot returned says how many
// still use it (InUse, UsedBy).
func (s *Service) RemoveSnapshot(ctx context.Context, c Caller, name string) (api.Snapshot, error) {
	sn, err := s.lookupSnapshot(ctx, c, name)
	if err != nil {
		return sn, err
	}
	if _, err := snapshot.Next(snapshot.State(sn.State), snapshot.EvRemove); err != nil {
		return sn, fmt.Errorf("snapshot %q: %w", sn.Name, err)
	}
	users, err := s.dropSnapshotUsers(ctx, sn, "removed")
	sn.InUse = len(users)
	for _, v := range users {
		if c.sees(v.Owner) {
			sn.UsedBy = append(sn.UsedBy, v.Name)
		}
	}
	return sn, err
}

// dropSnapshot removes a snapshot's record, then its files.
func (s *Service) dropSnapshot(ctx context.Context, sn api.Snapshot, why string) error {
	_, err := s.dropSnapshotUsers(ctx, sn, why)
	return err
}

// dropSnapshotUsers removes a snapshot's record, then its files, once no
// restore has them open half way, and returns the running VMs that
// still map its memory file.
func (s *Service) dropSnapshotUsers(ctx context.Context, sn api.Snapshot, why string) ([]api.VM, error) {
	unlock := s.snapshotLock(sn.ID, true)
	defer unlock()
	users, _ := s.snapshotUsers(ctx, sn)
	if _, err := s.store.DeleteSnapshot(ctx, sn.Name); err != nil && !errors.Is(err, store.ErrNotFound) {
		return users, err
	}
	if err := os.RemoveAll(sn.Dir); err != nil {
		s.log.Warn("removing snapshot files", "snapshot", sn.Name, "err", err)
	}
	if len(users) > 0 {
		names := make([]string, len(users))
		for i, v := range users {
			names[i] = v.Name
		}
		s.log.Info("snapshot removed; its memory file is freed when the VMs that map it stop", "snapshot", sn.Name, "kind", sn.Kind, "why", why, "used_by", strings.Join(names, ","))
	} else {
		s.log.Info("snapshot removed", "snapshot", sn.Name, "kind", sn.Kind, "why", why)
	}
	return users, nil
}

// dropTemplates removes the warm templates match selects: a template
// made from an image, kernel or agent that changed would restore what
// is no longer there.
func (s *Service) dropTemplates(ctx context.Context, why string, match func(api.Snapshot) bool) {
	sns, err := s.store.Snapshots(ctx)
	if err != nil {
		s.log.Warn("listing templates", "err", err)
		return
	}
	for _, sn := range sns {
		if sn.Kind == api.SnapshotKindTemplate && match(sn) {
			s.dropSnapshot(ctx, sn, why)
		}
	}
}

// reconcileSnapshots runs at daemon start: snapshots whose writing was
// interrupted go, so do templates of images, kernels or an agent that
// are not there any more, directories without a record, and RAM files
// of VMs that do not run.
func (s *Service) reconcileSnapshots(ctx context.Context) error {
	sns, err := s.store.Snapshots(ctx)
	if err != nil {
		return err
	}
	agent, _ := s.agentHash()
	known := map[string]bool{}
	for _, sn := range sns {
		switch {
		case sn.State == string(snapshot.Creating):
			s.dropSnapshot(ctx, sn, "interrupted: bangerd stopped while it was being written")
			continue
		case sn.Kind == api.SnapshotKindTemplate && agent != "" && sn.AgentHash != agent:
			s.dropTemplates(ctx, "the guest agent changed", func(s api.Snapshot) bool { return s.Name == sn.Name })
			continue
		case sn.Kind == api.SnapshotKindTemplate && !s.templateSourcesExist(ctx, sn):
			s.dropTemplates(ctx, "its image or kernel was removed", func(s api.Snapshot) bool { return s.Name == sn.Name })
			continue
		}
		known[sn.ID] = true
	}
	os.MkdirAll(s.layout.SnapshotsDir(), 0o755)
	if err := paths.RemoveLeftovers(s.log, s.layout.SnapshotsDir(), known); err != nil {
		return err
	}
	vms, err := s.store.VMs(ctx)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, v := range vms {
		if State(v.State).Live() {
			live[v.ID+".ram"] = true
		}
	}
	if _, err := os.Stat(s.layout.RAMDir()); err == nil {
		return paths.RemoveLeftovers(s.log, s.layout.RAMDir(), live)
	}
	return nil
}

func (s *Service) templateSourcesExist(ctx context.Context, sn api.Snapshot) bool {
	img, err := s.store.Image(ctx, sn.Image)
	if err != nil || img.ID != sn.ImageID {
		return false
	}
	k, err := s.store.Kernel(ctx, sn.Kernel)
	return err == nil && k.ID == sn.KernelID
}
