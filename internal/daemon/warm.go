package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"

	"banger/internal/api"
	"banger/internal/snapshot"
	"banger/internal/store"
	"banger/internal/vm"
	"banger/internal/vmm"
)

// This file is warm starts: a VM of the same image, kernel, agent, VMM
// and shape as an earlier one is restored from that one's template, the
// snapshot taken the instant it was first ready, instead of booted.

// templateKey is the key of v's warm template ("" when v's VMM cannot
// restore, or its version or the agent cannot be read).
func (d *Daemon) templateKey(ctx context.Context, v api.VM, img api.Image, k api.Kernel) string {
	_, b, err := d.backend(v.VMM)
	if err != nil || b.restore == nil {
		return ""
	}
	version, err := d.vmmVersion(ctx, v.VMM)
	if err != nil {
		d.log.Info("no warm start: the VMM's version is unknown", "err", err)
		return ""
	}
	agent, err := d.agentHash()
	if err != nil {
		return ""
	}
	return snapshot.Key(v.VMM, version, img.ID, k.ID, agent, v.VCPU, v.MemoryMiB, v.DiskBytes, v.Network)
}

// warmStart returns v's template key and, when a usable template has
// it, what to restore v from. A damaged template is dropped.
func (d *Daemon) warmStart(ctx context.Context, v api.VM, img api.Image, k api.Kernel) (string, *restoreFrom) {
	key := d.templateKey(ctx, v, img, k)
	if key == "" {
		return "", nil
	}
	tpl, err := d.store.Template(ctx, key)
	if err != nil {
		return key, nil
	}
	if _, err := d.restorable(ctx, tpl); err != nil {
		d.log.Warn("warm template unusable: dropping it", "template", tpl.Name, "err", err)
		d.dropSnapshot(ctx, tpl, err.Error())
		return key, nil
	}
	return key, &restoreFrom{snap: tpl}
}

// templateName is the name of the template with key.
func templateName(key string) string { return "template-" + key }

// captureTemplate snapshots the VM v, just ready after a cold boot and
// not yet used, as the warm template for key. A template someone else
// made meanwhile is fine; a failure costs only the next run's warmth.
func (d *Daemon) captureTemplate(ctx context.Context, v api.VM, key string) error {
	if _, err := d.store.Template(ctx, key); err == nil {
		return nil
	}
	sn, err := d.takeSnapshot(ctx, v, templateName(key), api.SnapshotKindTemplate, key)
	if errors.Is(err, store.ErrExists) {
		return nil
	}
	if err != nil {
		d.log.Warn("no warm template made", "vm", v.Name, "err", err)
		return err
	}
	d.log.Info("warm template made", "template", sn.Name, "image", sn.Image, "size", sn.SizeBytes, "paused_ms", sn.PausedMs)
	return nil
}

// handleWarm is POST /v1/images/warm: a template made ahead of time, by
// booting a throwaway VM of the requested shape, so even the first
// `vm run` of it restores. An existing template is the answer as is.
func (d *Daemon) handleWarm(w http.ResponseWriter, r *http.Request) error {
	var req api.WarmRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	ctx := r.Context()
	creq := api.VMCreateRequest{Name: "warm-" + newID()[:8], Image: req.Image, Kernel: req.Kernel, VMM: req.VMM,
		VCPU: req.VCPU, MemoryMiB: req.MemoryMiB, DiskBytes: req.DiskBytes, Network: req.Network, NoStart: true}
	v, err := d.createVM(ctx, creq, nil)
	if err != nil {
		return err
	}
	defer d.removeVM(context.Background(), v.Name)
	unlock := d.vmLock(v.Name)
	defer unlock()
	img, err := d.store.Image(ctx, v.Image)
	if err != nil {
		return err
	}
	k, err := d.store.Kernel(ctx, v.Kernel)
	if err != nil {
		return err
	}
	key := d.templateKey(ctx, *v, img, k)
	if key == "" {
		return fmt.Errorf("%w: warm templates on %s", vmm.ErrNotSupported, v.VMM)
	}
	if tpl, err := d.store.Template(ctx, key); err == nil {
		writeJSON(w, http.StatusOK, tpl)
		return nil
	}
	if _, err := d.launchVMLocked(*v, nil, key, nil); err != nil {
		return err
	}
	tpl, err := d.store.Template(ctx, key)
	if err != nil {
		return fmt.Errorf("the warm template of %s could not be made: %s says why", v.Image, d.layout.DaemonLog())
	}
	writeJSON(w, http.StatusCreated, tpl)
	return nil
}

// removeVM kills and removes the named VM, as `vm rm -f` does.
func (d *Daemon) removeVM(ctx context.Context, name string) error {
	unlock := d.vmLock(name)
	defer unlock()
	v, err := d.store.VM(ctx, name)
	if err != nil {
		return err
	}
	return d.removeVMLocked(ctx, v)
}

func (d *Daemon) removeVMLocked(ctx context.Context, v api.VM) error {
	if vm.State(v.State).Live() {
		if _, err := d.stopVMLocked(ctx, v, true); err != nil {
			return err
		}
	}
	if _, err := d.store.DeleteVM(ctx, v.Name); err != nil {
		return err
	}
	d.removeNet(v)
	if err := os.RemoveAll(v.Dir); err != nil {
		d.log.Warn("removing VM files", "vm", v.Name, "err", err)
	}
	d.log.Info("vm removed", "vm", v.Name)
	return nil
}
