package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"banger/internal/api"
	"banger/internal/imagepull"
	"banger/internal/paths"
	"banger/internal/store"
)

// checkNew fails unless name is a valid image name that no image has
// yet and the guest agent images need is there.
func (s *Service) checkNew(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if _, err := paths.GuestAgentBinary(); err != nil {
		return err
	}
	if existing, err := s.d.Store.Image(ctx, name); err == nil {
		return fmt.Errorf("%w: image %q exists (%s): remove it with `banger image rm %s` or choose another --name", store.ErrExists, name, existing.Source, name)
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}

// reserve claims name for an import (checkNew, and no pull, build or
// other import of it under way). release gives it up. Imports are never
// joined, since each brings its own stream.
func (s *Service) reserve(ctx context.Context, name string) (release func(), err error) {
	if err := s.checkNew(ctx, name); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pulls[name] != nil || s.building[name] {
		return nil, fmt.Errorf("%w: image %q is being made by another request: wait for it or choose another --name", api.ErrConflict, name)
	}
	if s.pruning {
		return nil, fmt.Errorf("%w: the blob cache is being pruned: try again in a moment", api.ErrConflict)
	}
	s.building[name] = true
	s.jobs.Add(1)
	return func() {
		s.mu.Lock()
		delete(s.building, name)
		s.mu.Unlock()
		s.jobs.Done()
	}, nil
}

// buildFunc makes an image's files in staging, with the guest agents
// assets to inject.
type buildFunc func(ctx context.Context, staging string, assets imagepull.GuestAgentAssets) (*imagepull.Result, error)

// publish builds an image in a staging directory with build, renames it
// into place and records it under name with the source that source
// describes. Any failure removes everything it made.
func (s *Service) publish(ctx context.Context, owner int, name string, build buildFunc, source func(*imagepull.Result) string) (_ *api.Image, err error) {
	agent, err := paths.GuestAgentBinary()
	if err != nil {
		return nil, err
	}
	id := store.NewID()
	staging := s.d.Layout.StagingDir(id)
	if err := os.MkdirAll(staging, 0o755); err != nil {
		return nil, fmt.Errorf("creating staging directory: %w", err)
	}
	defer os.RemoveAll(staging) // a no-op once renamed

	res, err := build(ctx, staging, imagepull.GuestAgentAssets{VsockAgentBin: agent})
	if err != nil {
		return nil, err
	}
	final := s.d.Layout.ImageDir(id)
	if err := os.Rename(staging, final); err != nil {
		return nil, fmt.Errorf("publishing image: %w", err)
	}
	paths.SyncDir(s.d.Layout.ImagesDir())
	img := api.Image{
		ID: id, Name: name, Ref: res.Ref, Digest: res.Digest,
		Rootfs:    filepath.Join(final, filepath.Base(res.Rootfs)),
		SizeBytes: res.SizeBytes, DiskBytes: res.DiskBytes,
		Config: res.Config, Layers: res.Layers, CreatedAt: time.Now().UTC(), Source: source(res), Owner: owner,
	}
	if err := s.d.Store.InsertImage(context.Background(), img); err != nil {
		os.RemoveAll(final)
		return nil, err
	}
	return &img, nil
}

// ProgressEvent is an image pipeline's progress as an API event.
func ProgressEvent(p imagepull.Progress) api.Event {
	return api.Event{Type: api.EventProgress, Stage: p.Stage, Message: p.Message, Layer: p.Layer, Layers: p.Layers,
		Digest: p.Digest, Current: p.Current, Total: p.Total, Cached: p.Cached}
}

func toAuthConfig(a *api.RegistryAuth) *authn.AuthConfig {
	if a == nil {
		return nil
	}
	return &authn.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
}
