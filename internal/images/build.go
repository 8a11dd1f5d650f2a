package images

import (
	"context"
	"errors"
	"fmt"
	"io"

	"banger/internal/api"
	"banger/internal/imagebuild"
	"banger/internal/imagepull"
)

// StageBuild reports that mmdebstrap is building a root file system.
const StageBuild = "build"

// Build builds an image from a distribution's package archive:
// mmdebstrap writes the root file system as a tarball, which goes
// straight into the import pipeline without touching the disk. Builds
// of the same name and spec share one job, as pulls do: two `vm run`s on
// a machine without Docker Hub build the default image once, and both
// get it.
func (s *Service) Build(ctx context.Context, owner int, req api.BuildRequest) (*Job, error) {
	spec, err := imagebuild.ParseSpec(req.Spec, req.Include)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	name := req.Name
	if name == "" {
		name = spec.String()
	}
	if err := s.checkNew(ctx, name); err != nil {
		return nil, err
	}
	mirrors := imagebuild.HostMirrors(spec.Distro, s.d.AptDir)
	source := "mmdebstrap " + spec.String()
	msg := fmt.Sprintf("mmdebstrap %s from %s", spec, mirrors.Archive)
	if req.Why != "" {
		msg = req.Why + ": " + msg
	}
	return s.startOrJoin(name, source, func(job *Job) (*api.Image, error) {
		job.publish(api.Event{Type: api.EventProgress, Stage: StageBuild, Message: msg})
		return s.publish(job.ctx, owner, name, func(ctx context.Context, staging string, assets imagepull.GuestAgentAssets) (*imagepull.Result, error) {
			return s.buildRootfs(ctx, spec, mirrors, func(src io.Reader) (*imagepull.Result, error) {
				return s.d.Puller.Import(ctx, imagepull.ImportRequest{
					Source: src, Dir: staging, Assets: assets,
					Progress: func(p imagepull.Progress) { job.publish(ProgressEvent(p)) },
				})
			})
		}, func(*imagepull.Result) string { return source })
	})
}

// buildRootfs runs mmdebstrap and hands its output stream to consume. A
// failure of mmdebstrap wins over the broken stream it causes; a failure
// of consume stops mmdebstrap. It returns only after mmdebstrap exited.
func (s *Service) buildRootfs(ctx context.Context, spec imagebuild.Spec, m imagebuild.Mirrors, consume func(io.Reader) (*imagepull.Result, error)) (*imagepull.Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := imagebuild.Build(ctx, s.d.Runner, spec, m, pw)
		pw.CloseWithError(err) // nil: EOF
		done <- err
	}()
	res, err := consume(pr)
	if err != nil {
		cancel()
		pr.CloseWithError(err) // unblock mmdebstrap's writes
	}
	if berr := <-done; berr != nil && !errors.Is(berr, context.Canceled) {
		return nil, berr
	}
	return res, err
}
