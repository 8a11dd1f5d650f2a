package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"banger/internal/api"
	"banger/internal/imagebuild"
	"banger/internal/imagepull"
)

// stageBuild reports that mmdebstrap is building a root file system.
const stageBuild = "build"

// handleBuild builds an image from a distribution's package archive:
// mmdebstrap writes the root file system as a tarball, which goes
// straight into the import pipeline without touching the disk.
func (d *Daemon) handleBuild(w http.ResponseWriter, r *http.Request) error {
	var req api.BuildRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	spec, err := imagebuild.ParseSpec(req.Spec, req.Include)
	if err != nil {
		return fmt.Errorf("%w: %v", errInvalid, err)
	}
	name := req.Name
	if name == "" {
		name = spec.String()
	}
	if err := d.checkNewImage(r.Context(), name); err != nil {
		return err
	}
	mirrors := imagebuild.HostMirrors(spec.Distro, d.aptDir())
	source := "mmdebstrap " + spec.String()
	msg := fmt.Sprintf("mmdebstrap %s from %s", spec, mirrors.Archive)
	if req.Why != "" {
		msg = req.Why + ": " + msg
	}
	// Builds of the same name and spec share one job, as pulls do: two
	// `vm run`s on a machine without Docker Hub build the default image
	// once, and both get it.
	job, sub, err := d.startOrJoin(name, source, func(job *pullJob) (*api.Image, error) {
		job.publish(api.Event{Type: api.EventProgress, Stage: stageBuild, Message: msg})
		return d.publishImage(job.ctx, name, func(ctx context.Context, staging string, assets imagepull.GuestAgentAssets) (*imagepull.Result, error) {
			return d.buildRootfs(ctx, spec, mirrors, func(src io.Reader) (*imagepull.Result, error) {
				return d.puller.Import(ctx, imagepull.ImportRequest{
					Source: src, Dir: staging, Assets: assets,
					Progress: func(p imagepull.Progress) { job.publish(progressEvent(p)) },
				})
			})
		}, func(*imagepull.Result) string { return source })
	})
	if err != nil {
		return err
	}
	d.streamJob(w, r, job, sub)
	return nil
}

// buildRootfs runs mmdebstrap and hands its output stream to consume. A
// failure of mmdebstrap wins over the broken stream it causes; a failure
// of consume stops mmdebstrap. It returns only after mmdebstrap exited.
func (d *Daemon) buildRootfs(ctx context.Context, spec imagebuild.Spec, m imagebuild.Mirrors, consume func(io.Reader) (*imagepull.Result, error)) (*imagepull.Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := imagebuild.Build(ctx, d.opts.Runner, spec, m, pw)
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

// aptDir is where the host's apt configuration lives.
func (d *Daemon) aptDir() string {
	if d.opts.AptDir != "" {
		return d.opts.AptDir
	}
	return "/etc/apt"
}
