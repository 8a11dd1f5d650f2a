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
	entries, err := os.ReadDir(d.layout.ImagesDir())
	if err != nil {
		return err
	}
	for _, e := range entries {
		if known[e.Name()] {
			continue
		}
		p := filepath.Join(d.layout.ImagesDir(), e.Name())
		reason := "orphan image directory"
		if strings.HasPrefix(e.Name(), ".staging-") {
			reason = "interrupted pull"
		}
		d.log.Info("removing leftover", "path", p, "reason", reason)
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	n, err := d.puller.Blobs().RemoveTemps()
	if n > 0 {
		d.log.Info("removed interrupted blob downloads", "count", n)
	}
	return err
}
