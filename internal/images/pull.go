package images

import (
	"context"
	"errors"
	"fmt"
	"io"

	"banger/internal/api"
	"banger/internal/imagepull"
	"banger/internal/paths"
	"banger/internal/store"
)

// Pull pulls req.Ref from its registry as an image, or joins the pull of
// it already under way. A name that exists with the same reference at
// the same digest is up to date (a job that is already done); anything
// else under that name is refused, because replacing an image under VMs
// that use it is not a pull's call.
// The image is owner's (see Remove); a pull joined is the first
// puller's.
func (s *Service) Pull(ctx context.Context, owner int, req api.PullRequest) (*Job, error) {
	ref, err := imagepull.ParseReference(req.Ref)
	if err != nil {
		return nil, err
	}
	name := req.Name
	if name == "" {
		name = imagepull.FamiliarName(ref)
	}
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if _, err := paths.GuestAgentBinary(); err != nil {
		return nil, err
	}
	if existing, err := s.d.Store.Image(ctx, name); err == nil {
		return s.pullExisting(ctx, req, existing, ref.Name())
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	return s.startOrJoin(name, ref.Name(), func(job *Job) (*api.Image, error) {
		return s.publish(job.ctx, owner, job.name, func(ctx context.Context, staging string, assets imagepull.GuestAgentAssets) (*imagepull.Result, error) {
			return s.d.Puller.Pull(ctx, imagepull.Request{
				Ref: req.Ref, Dir: staging, Assets: assets, Auth: toAuthConfig(req.Auth),
				Progress: func(p imagepull.Progress) { job.publish(ProgressEvent(p)) },
			})
		}, func(*imagepull.Result) string { return imagepull.KindRegistry })
	})
}

func (s *Service) pullExisting(ctx context.Context, req api.PullRequest, existing api.Image, ref string) (*Job, error) {
	if existing.Ref != ref {
		return nil, fmt.Errorf("%w: image %q is taken by %s: remove it with `banger image rm %s` or pull under another --name",
			store.ErrExists, existing.Name, existing.Ref, existing.Name)
	}
	_, digest, err := s.d.Puller.Resolve(ctx, req.Ref, toAuthConfig(req.Auth))
	if err != nil {
		return nil, err
	}
	if digest != existing.Digest {
		return nil, fmt.Errorf("%w: image %q holds %s, but %s now points to %s: remove it with `banger image rm %s` and pull again, or pull under another --name",
			store.ErrExists, existing.Name, existing.Digest, existing.Ref, digest, existing.Name)
	}
	return doneJob(existing, "image is up to date"), nil
}

// Import builds an image named opts.Name from src: a docker save
// archive, an OCI layout as a tar, or a root file system tarball, as it
// streams in. Progress goes to emit. Imports are never joined: each
// brings its own stream.
func (s *Service) Import(ctx context.Context, owner int, opts api.ImportOptions, src io.Reader, emit func(api.Event)) (*api.Image, error) {
	if opts.Name == "" {
		return nil, fmt.Errorf("%w: an import needs a name: give --name", api.ErrInvalid)
	}
	override := imagepull.ConfigOverride(opts.Config)
	if err := override.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	release, err := s.reserve(ctx, opts.Name)
	if err != nil {
		return nil, err
	}
	defer release()
	source := opts.Source
	if source == "" {
		source = "-"
	}
	img, err := s.publish(ctx, owner, opts.Name, func(ctx context.Context, staging string, assets imagepull.GuestAgentAssets) (*imagepull.Result, error) {
		return s.d.Puller.Import(ctx, imagepull.ImportRequest{
			Source: src, Dir: staging, Ref: opts.Ref, Config: override, Assets: assets,
			Progress: func(p imagepull.Progress) { emit(ProgressEvent(p)) },
		})
	}, func(res *imagepull.Result) string { return res.Kind + " " + source })
	if err == nil {
		s.d.Log.Info("image imported", "image", img.Name, "source", img.Source, "digest", img.Digest)
	}
	return img, err
}

// CheckImport fails at once for options an import could not use (no or
// a taken name, a bad config override, the name being made by another
// request), so a caller can refuse before reading the archive. Import
// checks again.
func (s *Service) CheckImport(ctx context.Context, opts api.ImportOptions) error {
	if opts.Name == "" {
		return fmt.Errorf("%w: an import needs a name: give --name", api.ErrInvalid)
	}
	if err := imagepull.ConfigOverride(opts.Config).Validate(); err != nil {
		return fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	if err := s.checkNew(ctx, opts.Name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pulls[opts.Name] != nil || s.building[opts.Name] {
		return fmt.Errorf("%w: image %q is being made by another request: wait for it or choose another --name", api.ErrConflict, opts.Name)
	}
	return nil
}
