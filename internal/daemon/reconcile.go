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
	closePrivateDirs(d, d.layout.VMsDir(), d.layout.SnapshotsDir())
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

// closePrivateDirs brings what older banger versions made world-readable
// (VM and snapshot directories 0755, disks 0644) to the modes new ones get:
// directories 0700, their regular files 0600.
func closePrivateDirs(d *Daemon, parents ...string) {
	for _, parent := range parents {
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			dir := filepath.Join(parent, e.Name())
			if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() || fi.Mode().Perm() == vmDirMode {
				continue
			}
			if err := os.Chmod(dir, vmDirMode); err != nil {
				d.log.Warn("closing a VM or snapshot directory to others", "dir", dir, "err", err)
				continue
			}
			files, _ := os.ReadDir(dir)
			for _, f := range files {
				if f.Type().IsRegular() {
					os.Chmod(filepath.Join(dir, f.Name()), 0o600)
				}
			}
			d.log.Info("closed a VM or snapshot directory to others", "dir", dir)
		}
	}
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
