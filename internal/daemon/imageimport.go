package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"banger/internal/api"
	"banger/internal/imagepull"
	"banger/internal/paths"
	"banger/internal/store"
)

// handleImport builds an image from the request body: a docker save
// archive, an OCI layout as a tar, or a root file system tarball. The
// CLI streams the file, so bangerd never needs to read the user's path.
// Options come as query parameters: options (JSON api.ImportOptions),
// or name and ref alone (curl --data-binary @FILE ...?name=N).
func (d *Daemon) handleImport(w http.ResponseWriter, r *http.Request) error {
	var opts api.ImportOptions
	q := r.URL.Query()
	if s := q.Get("options"); s != "" {
		if err := json.Unmarshal([]byte(s), &opts); err != nil {
			return fmt.Errorf("%w: decoding options: %v", errInvalid, err)
		}
	}
	if n := q.Get("name"); n != "" {
		opts.Name = n
	}
	if ref := q.Get("ref"); ref != "" {
		opts.Ref = ref
	}
	if opts.Name == "" {
		return fmt.Errorf("%w: an import needs a name: give --name", errInvalid)
	}
	override := imagepull.ConfigOverride(opts.Config)
	if err := override.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errInvalid, err)
	}
	release, err := d.reserveImageName(r.Context(), opts.Name)
	if err != nil {
		return err
	}
	defer release()

	// Progress goes out while the body still comes in.
	if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
		return err
	}
	ew := newEventWriter(w)
	source := opts.Source
	if source == "" {
		source = "-"
	}
	img, err := d.publishImage(r.Context(), opts.Name, func(ctx context.Context, staging string, assets imagepull.GuestAgentAssets) (*imagepull.Result, error) {
		return d.puller.Import(ctx, imagepull.ImportRequest{
			Source: r.Body, Dir: staging, Ref: opts.Ref, Config: override, Assets: assets,
			Progress: func(p imagepull.Progress) { ew.emit(progressEvent(p)) },
		})
	}, func(res *imagepull.Result) string { return res.Kind + " " + source })
	if err == nil {
		d.log.Info("image imported", "image", img.Name, "source", img.Source, "digest", img.Digest)
	}
	emitImageEnd(ew, img, err)
	return nil
}

// emitImageEnd sends the final event of a pull, import or build stream:
// the image, or the error that ended it.
func emitImageEnd(ew *eventWriter, img *api.Image, err error) {
	if err != nil {
		ew.emit(api.Event{Type: api.EventError, Error: apiError(err)})
		return
	}
	ew.emit(api.Event{Type: api.EventResult, Stage: imagepull.StageDone, Image: img})
}

func progressEvent(p imagepull.Progress) api.Event {
	return api.Event{Type: api.EventProgress, Stage: p.Stage, Message: p.Message, Layer: p.Layer, Layers: p.Layers,
		Digest: p.Digest, Current: p.Current, Total: p.Total, Cached: p.Cached}
}

// checkNewImage fails unless name is a valid image name that no image
// has yet and the guest agent images need is there.
func (d *Daemon) checkNewImage(ctx context.Context, name string) error {
	if err := validateImageName(name); err != nil {
		return err
	}
	if _, err := paths.GuestAgentBinary(); err != nil {
		return err
	}
	if existing, err := d.store.Image(ctx, name); err == nil {
		return fmt.Errorf("%w: image %q exists (%s): remove it with `banger image rm %s` or choose another --name", store.ErrExists, name, existing.Source, name)
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}

// reserveImageName claims name for an import (checkNewImage, and no pull,
// build or other import of it under way). release gives it up. Imports
// are never joined, since each brings its own stream.
func (d *Daemon) reserveImageName(ctx context.Context, name string) (release func(), err error) {
	if err := d.checkNewImage(ctx, name); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pulls[name] != nil || d.building[name] {
		return nil, fmt.Errorf("%w: image %q is being made by another request: wait for it or choose another --name", errConflict, name)
	}
	if d.pruning {
		return nil, fmt.Errorf("%w: the blob cache is being pruned: try again in a moment", errConflict)
	}
	d.building[name] = true
	d.jobs.Add(1)
	return func() {
		d.mu.Lock()
		delete(d.building, name)
		d.mu.Unlock()
		d.jobs.Done()
	}, nil
}

// publishImage builds an image in a staging directory with build, renames
// it into place and records it under name with the source that source
// describes. Any failure removes everything it made.
func (d *Daemon) publishImage(ctx context.Context, name string, build func(ctx context.Context, staging string, assets imagepull.GuestAgentAssets) (*imagepull.Result, error), source func(*imagepull.Result) string) (_ *api.Image, err error) {
	agent, err := paths.GuestAgentBinary()
	if err != nil {
		return nil, err
	}
	id := newID()
	staging := d.layout.StagingDir(id)
	if err := os.MkdirAll(staging, 0o755); err != nil {
		return nil, fmt.Errorf("creating staging directory: %w", err)
	}
	defer os.RemoveAll(staging) // a no-op once renamed

	res, err := build(ctx, staging, imagepull.GuestAgentAssets{VsockAgentBin: agent})
	if err != nil {
		return nil, err
	}
	final := d.layout.ImageDir(id)
	if err := os.Rename(staging, final); err != nil {
		return nil, fmt.Errorf("publishing image: %w", err)
	}
	syncDir(d.layout.ImagesDir())
	img := api.Image{
		ID: id, Name: name, Ref: res.Ref, Digest: res.Digest,
		Rootfs:    filepath.Join(final, filepath.Base(res.Rootfs)),
		SizeBytes: res.SizeBytes, DiskBytes: res.DiskBytes,
		Config: res.Config, Layers: res.Layers, CreatedAt: time.Now().UTC(), Source: source(res),
	}
	if err := d.store.InsertImage(context.Background(), img); err != nil {
		os.RemoveAll(final)
		return nil, err
	}
	return &img, nil
}
