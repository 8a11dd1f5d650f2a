// Package images is the image service: it owns images end to end. Pulls
// from registries, imports of archives and builds from a distribution's
// archive all publish through one path (staging directory, rename,
// record), concurrent pulls and builds of one image join one job, and
// removal and reconcile keep files and records in agreement. It knows
// nothing of HTTP: progress goes to a callback, results are api types,
// errors carry the API's sentinels. imagepull and imagebuild do the
// work; this package decides when and under what name.
package images

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"banger/internal/api"
	"banger/internal/imagepull"
	"banger/internal/paths"
	"banger/internal/store"
	"banger/internal/system"
)

// Deps are what the service needs, given once by the daemon's wiring.
type Deps struct {
	Layout paths.Layout
	Store  *store.Store
	Puller *imagepull.Puller
	// Runner runs mmdebstrap for builds.
	Runner system.CommandRunner
	Log    *slog.Logger
	// AptDir is the host's apt configuration (the mirror a build reads);
	// default /etc/apt.
	AptDir string
	// Removed is told of every image removed, after its record and
	// files went (the VM service drops its warm templates).
	Removed func(ctx context.Context, img api.Image)
}

// Service owns images. Safe for concurrent use.
type Service struct {
	d Deps

	// ctx outlives requests: a pull keeps running when one client goes
	// while another still waits for it. Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	jobs   sync.WaitGroup

	mu    sync.Mutex
	pulls map[string]*Job // by image name
	// building holds the names of images being imported.
	building map[string]bool
	// pruning is set while the blob cache is pruned; pulls wait for it.
	pruning bool
}

// New returns the image service.
func New(d Deps) *Service {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.AptDir == "" {
		d.AptDir = "/etc/apt"
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Service{d: d, ctx: ctx, cancel: cancel, pulls: map[string]*Job{}, building: map[string]bool{}}
}

// Close cancels the pulls and builds under way and waits until they have
// cleaned up.
func (s *Service) Close() {
	s.cancel()
	s.jobs.Wait()
}

// Pulls is how many pulls and builds are under way.
func (s *Service) Pulls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pulls)
}

// Get is the image named name.
func (s *Service) Get(ctx context.Context, name string) (api.Image, error) {
	img, err := s.d.Store.Image(ctx, name)
	img.OwnerName = ownerName(img.Owner)
	return img, store.Hint(err, "list images with `banger image list`")
}

// List is every image: images are everyone's to use.
func (s *Service) List(ctx context.Context) ([]api.Image, error) {
	imgs, err := s.d.Store.Images(ctx)
	for i := range imgs {
		imgs[i].OwnerName = ownerName(imgs[i].Owner)
	}
	return imgs, err
}

// Image names: what people type after --image. Lowercase so they survive
// being DNS-ish identifiers later; "/", ":" and "@" allowed so a
// reference's short form is a valid name.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._/:@-]{0,254}$`)

// ValidateName checks an image name.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) || strings.Contains(name, "..") || strings.Contains(name, "//") {
		return fmt.Errorf("%w: image name %q: use lowercase letters, digits and . _ - / : @ (at most 255), starting with a letter or digit", api.ErrInvalid, name)
	}
	return nil
}

// Remove removes the named image for uid: images are everyone's to use,
// their maker's (and an admin's) to remove. The record goes first, then
// the files (a crash in between leaves a directory that the next start's
// reconcile removes, never a record without its file).
func (s *Service) Remove(ctx context.Context, uid int, admin bool, name string) (api.Image, error) {
	if img, err := s.d.Store.Image(ctx, name); err == nil && !admin && img.Owner != uid {
		return api.Image{}, fmt.Errorf("%w: image %q is %s's: only they or root may remove it", api.ErrForbidden, name, ownerName(img.Owner))
	}
	s.mu.Lock()
	_, pulling := s.pulls[name]
	s.mu.Unlock()
	if pulling {
		return api.Image{}, fmt.Errorf("%w: image %q is being pulled: wait for the pull to finish or cancel it", api.ErrConflict, name)
	}
	img, err := s.d.Store.DeleteImage(ctx, name)
	if err != nil {
		return img, store.Hint(err, "list images with `banger image list`")
	}
	if err := os.RemoveAll(s.d.Layout.ImageDir(img.ID)); err != nil {
		s.d.Log.Warn("removing image files", "image", name, "err", err)
	}
	if s.d.Removed != nil {
		s.d.Removed(ctx, img)
	}
	s.d.Log.Info("image removed", "image", name, "id", img.ID)
	return img, nil
}

// PruneCache removes cached layer blobs no image uses, downloaded kernel
// packages and Debian indexes. Pulls may not run meanwhile.
func (s *Service) PruneCache(ctx context.Context) (api.PruneResult, error) {
	s.mu.Lock()
	if len(s.pulls) > 0 {
		s.mu.Unlock()
		return api.PruneResult{}, fmt.Errorf("%w: %d pull(s) under way: prune the cache when they finish", api.ErrConflict, len(s.pulls))
	}
	s.pruning = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.pruning = false
		s.mu.Unlock()
	}()
	imgs, err := s.d.Store.Images(ctx)
	if err != nil {
		return api.PruneResult{}, err
	}
	keep := map[string]bool{}
	for _, img := range imgs {
		for _, l := range img.Layers {
			keep[l.Digest] = true
		}
	}
	removed, freed, err := s.d.Puller.Blobs().Prune(keep)
	if err != nil {
		return api.PruneResult{}, fmt.Errorf("pruning blob cache: %w", err)
	}
	// Downloaded kernel packages and Debian indexes are only there to
	// save a download; an explicit prune gives their space back too.
	for _, dir := range []string{s.d.Layout.KernelCacheDir(), s.d.Layout.ArchiveCacheDir()} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() && os.Remove(filepath.Join(dir, e.Name())) == nil {
				removed++
				freed += fi.Size()
			}
		}
	}
	s.d.Log.Info("blob cache pruned", "removed", removed, "freed", freed)
	return api.PruneResult{RemovedBlobs: removed, FreedBytes: freed}, nil
}

// Reconcile makes the files on disk agree with the store after a crash
// or a kill -9: staging directories of interrupted pulls and image
// directories without a record go; records whose image file vanished go
// too (with a warning); interrupted blob downloads go.
func (s *Service) Reconcile(ctx context.Context) error {
	imgs, err := s.d.Store.Images(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, img := range imgs {
		if _, err := os.Stat(img.Rootfs); errors.Is(err, os.ErrNotExist) {
			s.d.Log.Warn("image file missing: dropping its record; pull it again", "image", img.Name, "rootfs", img.Rootfs)
			if _, err := s.d.Store.DeleteImage(ctx, img.Name); err != nil {
				return err
			}
			continue
		}
		known[img.ID] = true
	}
	if err := paths.RemoveLeftovers(s.d.Log, s.d.Layout.ImagesDir(), known); err != nil {
		return err
	}
	n, err := s.d.Puller.Blobs().RemoveTemps()
	if n > 0 {
		s.d.Log.Info("removed interrupted blob downloads", "count", n)
	}
	return err
}

// ownerName is the user name of uid, or its number.
func ownerName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}
