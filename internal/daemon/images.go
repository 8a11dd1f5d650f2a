package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"banger/internal/api"
	"banger/internal/imagepull"
	"banger/internal/paths"
	"banger/internal/store"
)

// Image names: what people type after --image. Lowercase so they survive
// being DNS-ish identifiers later; "/", ":" and "@" allowed so a
// reference's short form is a valid name.
var imageNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._/:@-]{0,254}$`)

func validateImageName(name string) error {
	if !imageNameRE.MatchString(name) || strings.Contains(name, "..") || strings.Contains(name, "//") {
		return fmt.Errorf("%w: image name %q: use lowercase letters, digits and . _ - / : @ (at most 255), starting with a letter or digit", errInvalid, name)
	}
	return nil
}

func newID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func withHint(err error, hint string) error {
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %s", err, hint)
	}
	return err
}

func (d *Daemon) handleRemoveImage(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	d.mu.Lock()
	_, pulling := d.pulls[name]
	d.mu.Unlock()
	if pulling {
		return fmt.Errorf("%w: image %q is being pulled: wait for the pull to finish or cancel it", errConflict, name)
	}
	img, err := d.store.DeleteImage(r.Context(), name)
	if err != nil {
		return withHint(err, "list images with `banger image list`")
	}
	// The record is gone first: a crash here leaves a directory that the
	// next start's reconcile removes, never a record without its file.
	if err := os.RemoveAll(d.layout.ImageDir(img.ID)); err != nil {
		d.log.Warn("removing image files", "image", name, "err", err)
	}
	d.dropTemplates(r.Context(), "its image was removed", func(sn api.Snapshot) bool { return sn.ImageID == img.ID })
	d.log.Info("image removed", "image", name, "id", img.ID)
	writeJSON(w, http.StatusOK, img)
	return nil
}

func (d *Daemon) handlePrune(w http.ResponseWriter, r *http.Request) error {
	d.mu.Lock()
	if len(d.pulls) > 0 {
		d.mu.Unlock()
		return fmt.Errorf("%w: %d pull(s) under way: prune the cache when they finish", errConflict, len(d.pulls))
	}
	d.pruning = true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.pruning = false
		d.mu.Unlock()
	}()
	imgs, err := d.store.Images(r.Context())
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, img := range imgs {
		for _, l := range img.Layers {
			keep[l.Digest] = true
		}
	}
	removed, freed, err := d.puller.Blobs().Prune(keep)
	if err != nil {
		return fmt.Errorf("pruning blob cache: %w", err)
	}
	// Downloaded kernel packages and Debian indexes are only there to
	// save a download; an explicit prune gives their space back too.
	for _, dir := range []string{d.layout.KernelCacheDir(), d.layout.ArchiveCacheDir()} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() && os.Remove(filepath.Join(dir, e.Name())) == nil {
				removed++
				freed += fi.Size()
			}
		}
	}
	d.log.Info("blob cache pruned", "removed", removed, "freed", freed)
	writeJSON(w, http.StatusOK, api.PruneResult{RemovedBlobs: removed, FreedBytes: freed})
	return nil
}

// pullJob is one pull or build under way; every request for the same
// image name and source (ref: a reference, or "mmdebstrap SPEC") shares
// it. run does the work on ctx, which ends when the last waiter leaves.
type pullJob struct {
	name, ref string
	run       func(*pullJob) (*api.Image, error)
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{}

	mu      sync.Mutex
	subs    map[chan api.Event]struct{}
	waiters int
	img     *api.Image
	err     error
}

// publish fans a progress event out to every waiter without blocking:
// a slow client misses progress lines, never the result.
func (j *pullJob) publish(ev api.Event) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for ch := range j.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

func (j *pullJob) join() chan api.Event {
	ch := make(chan api.Event, 64)
	j.mu.Lock()
	j.subs[ch] = struct{}{}
	j.waiters++
	j.mu.Unlock()
	return ch
}

// leave drops a waiter; the last one to leave before the pull finishes
// cancels it, so a Ctrl-C on the only client stops the work.
func (j *pullJob) leave(ch chan api.Event) {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.subs, ch)
	j.waiters--
	if j.waiters == 0 {
		j.cancel()
	}
}

func toAuthConfig(a *api.RegistryAuth) *authn.AuthConfig {
	if a == nil {
		return nil
	}
	return &authn.AuthConfig{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
}

func (d *Daemon) handlePull(w http.ResponseWriter, r *http.Request) error {
	var req api.PullRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	ref, err := imagepull.ParseReference(req.Ref)
	if err != nil {
		return err
	}
	name := req.Name
	if name == "" {
		name = imagepull.FamiliarName(ref)
	}
	if err := validateImageName(name); err != nil {
		return err
	}
	if _, err := paths.GuestAgentBinary(); err != nil {
		return err
	}

	if existing, err := d.store.Image(r.Context(), name); err == nil {
		return d.pullExisting(w, r, req, existing, ref.Name())
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}

	job, sub, err := d.startOrJoin(name, ref.Name(), func(job *pullJob) (*api.Image, error) { return d.pullAndPublish(job, req) })
	if err != nil {
		return err
	}
	d.streamJob(w, r, job, sub)
	return nil
}

// streamJob sends a job's progress (from sub, the client's subscription)
// to one client until the job ends (its result or error last) or the
// client goes; the last client to go cancels the job.
func (d *Daemon) streamJob(w http.ResponseWriter, r *http.Request, job *pullJob, sub chan api.Event) {
	ew := newEventWriter(w)
	for {
		select {
		case ev := <-sub:
			ew.emit(ev)
		case <-job.done:
			job.mu.Lock()
			delete(job.subs, sub)
			job.mu.Unlock()
			for len(sub) > 0 {
				ew.emit(<-sub)
			}
			emitImageEnd(ew, job.img, job.err)
			return
		case <-r.Context().Done():
			job.leave(sub)
			return
		}
	}
}

// pullExisting answers a pull of a name that is already taken: the same
// reference at the same digest is up to date; anything else is refused,
// because replacing an image under VMs that use it is not a pull's call.
func (d *Daemon) pullExisting(w http.ResponseWriter, r *http.Request, req api.PullRequest, existing api.Image, ref string) error {
	if existing.Ref != ref {
		return fmt.Errorf("%w: image %q is taken by %s: remove it with `banger image rm %s` or pull under another --name",
			store.ErrExists, existing.Name, existing.Ref, existing.Name)
	}
	_, digest, err := d.puller.Resolve(r.Context(), req.Ref, toAuthConfig(req.Auth))
	if err != nil {
		return err
	}
	if digest != existing.Digest {
		return fmt.Errorf("%w: image %q holds %s, but %s now points to %s: remove it with `banger image rm %s` and pull again, or pull under another --name",
			store.ErrExists, existing.Name, existing.Digest, existing.Ref, digest, existing.Name)
	}
	ew := newEventWriter(w)
	ew.emit(api.Event{Type: api.EventResult, Stage: imagepull.StageDone, Message: "image is up to date", Image: &existing})
	return nil
}

func (d *Daemon) startOrJoin(name, ref string, run func(*pullJob) (*api.Image, error)) (*pullJob, chan api.Event, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pruning {
		return nil, nil, fmt.Errorf("%w: the blob cache is being pruned: pull again in a moment", errConflict)
	}
	if d.building[name] {
		return nil, nil, fmt.Errorf("%w: image %q is being imported: wait for it or use another --name", errConflict, name)
	}
	if job := d.pulls[name]; job != nil {
		if job.ref != ref {
			return nil, nil, fmt.Errorf("%w: image %q is being made from %s: wait for it or use another --name", errConflict, name, job.ref)
		}
		return job, job.join(), nil
	}
	ctx, cancel := context.WithCancel(d.jobCtx)
	job := &pullJob{name: name, ref: ref, run: run, ctx: ctx, cancel: cancel, done: make(chan struct{}), subs: map[chan api.Event]struct{}{}}
	d.pulls[name] = job
	d.jobs.Add(1)
	// The first client subscribes before the work starts, so it sees
	// every event.
	sub := job.join()
	go d.runPull(job)
	return job, sub, nil
}

func (d *Daemon) runPull(job *pullJob) {
	defer d.jobs.Done()
	defer job.cancel()
	start := time.Now()
	img, err := job.run(job)
	d.mu.Lock()
	delete(d.pulls, job.name)
	d.mu.Unlock()
	job.mu.Lock()
	job.img, job.err = img, err
	job.mu.Unlock()
	close(job.done)
	if err != nil {
		d.log.Warn("image failed", "image", job.name, "from", job.ref, "err", err)
		return
	}
	d.log.Info("image made", "image", job.name, "from", job.ref, "digest", img.Digest, "duration", time.Since(start))
}

// pullAndPublish pulls the image into a staging directory, renames it
// into place and records it. Any failure removes everything it made.
func (d *Daemon) pullAndPublish(job *pullJob, req api.PullRequest) (*api.Image, error) {
	return d.publishImage(job.ctx, job.name, func(ctx context.Context, staging string, assets imagepull.GuestAgentAssets) (*imagepull.Result, error) {
		return d.puller.Pull(ctx, imagepull.Request{
			Ref: req.Ref, Dir: staging, Assets: assets, Auth: toAuthConfig(req.Auth),
			Progress: func(p imagepull.Progress) { job.publish(progressEvent(p)) },
		})
	}, func(*imagepull.Result) string { return imagepull.KindRegistry })
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		f.Sync()
		f.Close()
	}
}
