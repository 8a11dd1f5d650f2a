package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
)

// reconcile makes the files on disk agree with the store after a crash or
// a kill -9: staging directories of interrupted pulls and image
// directories without a record go; records whose image file vanished go
// too (with a warning); interrupted blob downloads go.
func (d *Daemon) reconcile(ctx context.Context) error {
	imgs, err := d.store.Images(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, img := range imgs {
		if _, err := os.Stat(img.Rootfs); errors.Is(err, os.ErrNotExist) {
			d.log.Warn("image file missing: dropping its record; pull it again", "image", img.Name, "rootfs", img.Rootfs)
			if _, err := d.store.DeleteImage(ctx, img.Name); err != nil {
				return err
			}
			continue
		}
		known[img.ID] = true
	}
	if err := removeLeftovers(d, d.layout.ImagesDir(), known); err != nil {
		return err
	}
	if err := d.reconcileKernels(ctx); err != nil {
		return err
	}
	if err := d.reconcileVMs(ctx); err != nil {
		return err
	}
	if err := d.reconcileSnapshots(ctx); err != nil {
		return err
	}
	// The network is rebuilt from the store at every VM start and stop:
	// a failure here is worth a warning, not a daemon that cannot start.
	if err := d.reconcileNet(ctx); err != nil {
		d.log.Warn("reconciling the VM network (retried at the next VM start or stop)", "err", err)
	}
	n, err := d.puller.Blobs().RemoveTemps()
	if n > 0 {
		d.log.Info("removed interrupted blob downloads", "count", n)
	}
	return err
}

// removeLeftovers removes every entry of dir whose name is not a known
// id: staging directories of interrupted work and orphans of records
// that went away.
func removeLeftovers(d *Daemon, dir string, known map[string]bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if known[e.Name()] {
			continue
		}
		p := filepath.Join(dir, e.Name())
		reason := "orphan directory"
		if strings.HasPrefix(e.Name(), ".") {
			reason = "interrupted work"
		}
		d.log.Info("removing leftover", "path", p, "reason", reason)
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}
