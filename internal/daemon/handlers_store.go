package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"

	"banger/internal/api"
	"banger/internal/imagepull"
	"banger/internal/images"
)

// The image and kernel endpoints: decode, call one method of the image
// or kernel service, encode. Long operations stream NDJSON events and
// end with a result or error event.

func (d *Daemon) handlePull(w http.ResponseWriter, r *http.Request) error {
	var req api.PullRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	job, err := d.images.Pull(r.Context(), callerOf(r.Context()).UID, req)
	if err != nil {
		return err
	}
	return followImage(w, r, job)
}

func (d *Daemon) handleBuild(w http.ResponseWriter, r *http.Request) error {
	var req api.BuildRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	job, err := d.images.Build(r.Context(), callerOf(r.Context()).UID, req)
	if err != nil {
		return err
	}
	return followImage(w, r, job)
}

// followImage streams a pull or build job's progress to one client until
// it ends (its result or error last) or the client goes; the last client
// to go cancels the job.
func followImage(w http.ResponseWriter, r *http.Request, job *images.Job) error {
	ew := newEventWriter(w)
	img, msg, err := job.Follow(r.Context(), func(ev api.Event) { ew.emit(ev) })
	if r.Context().Err() != nil {
		return nil // the client went: nobody to tell
	}
	emitImageEnd(ew, img, msg, err)
	return nil
}

// emitImageEnd sends the final event of a pull, import or build stream:
// the image, or the error that ended it.
func emitImageEnd(ew *eventWriter, img *api.Image, msg string, err error) {
	if err != nil {
		ew.emit(api.Event{Type: api.EventError, Error: apiError(err)})
		return
	}
	ew.emit(api.Event{Type: api.EventResult, Stage: imagepull.StageDone, Message: msg, Image: img})
}

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
			return fmt.Errorf("%w: decoding options: %v", api.ErrInvalid, err)
		}
	}
	if n := q.Get("name"); n != "" {
		opts.Name = n
	}
	if ref := q.Get("ref"); ref != "" {
		opts.Ref = ref
	}
	// Refused before the body is read: an HTTP error, not an event.
	if err := d.images.CheckImport(r.Context(), opts); err != nil {
		return err
	}
	// Progress goes out while the body still comes in.
	if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
		return err
	}
	ew := newEventWriter(w)
	img, err := d.images.Import(r.Context(), callerOf(r.Context()).UID, opts, r.Body, func(ev api.Event) { ew.emit(ev) })
	emitImageEnd(ew, img, "", err)
	return nil
}

func (d *Daemon) handleRemoveImage(w http.ResponseWriter, r *http.Request) error {
	c := callerOf(r.Context())
	img, err := d.images.Remove(r.Context(), c.UID, c.Admin, r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, img)
	return nil
}

func (d *Daemon) handlePrune(w http.ResponseWriter, r *http.Request) error {
	res, err := d.images.PruneCache(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (d *Daemon) handleKernelImport(w http.ResponseWriter, r *http.Request) error {
	var req api.KernelImportRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	k, err := d.kernels.Import(r.Context(), callerOf(r.Context()).Cred(), req.Name, req.From)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, k)
	return nil
}

func (d *Daemon) handleKernelPull(w http.ResponseWriter, r *http.Request) error {
	var req api.KernelPullRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	run, err := d.kernels.Pull(r.Context(), callerOf(r.Context()).UID, req)
	if err != nil {
		return err
	}
	ew := newEventWriter(w)
	k, msg, err := run(r.Context(), func(ev api.Event) { ew.emit(ev) })
	if err != nil {
		ew.emit(api.Event{Type: api.EventError, Error: apiError(err)})
		return nil
	}
	ew.emit(api.Event{Type: api.EventResult, Message: msg, Kernel: k})
	return nil
}

// handleDefaultKernel answers which kernel a new VM gets (importing the
// host's own on first use).
func (d *Daemon) handleDefaultKernel(w http.ResponseWriter, r *http.Request) error {
	k, err := d.kernels.Default(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, k)
	return nil
}

func (d *Daemon) handleRemoveKernel(w http.ResponseWriter, r *http.Request) error {
	c := callerOf(r.Context())
	k, err := d.kernels.Remove(r.Context(), c.UID, c.Admin, r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, k)
	return nil
}

func (d *Daemon) handleKernelCatalog(w http.ResponseWriter, r *http.Request) error {
	entries, err := d.kernels.Catalog()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, entries)
	return nil
}
