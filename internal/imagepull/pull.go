// Package imagepull turns an OCI image into a bootable ext4 root file
// system: resolve the reference for linux/amd64, fetch layer blobs into a
// shared digest-addressed cache, flatten the layers (whiteouts, hard
// links, devices, xattrs, ownership), write an ext4 without mounting it
// and without root, and inject banger's guest agents with one debugfs
// batch. It writes only inside the directory its caller hands it and the
// blob cache; publishing the result and recording it is the caller's job.
package imagepull

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"banger/internal/api"
	"banger/internal/imagepull/flatten"
	"banger/internal/system"
)

// Sentinel errors a caller can match with errors.Is.
var (
	ErrBadReference = errors.New("invalid image reference")
	ErrNotFound     = errors.New("image not found")
	ErrAuth         = errors.New("registry authentication failed")
	ErrUnreachable  = errors.New("registry unreachable")
	ErrNoPlatform   = errors.New("no linux/amd64 image")
	ErrNoSpace      = errors.New("no space left on device")
	// ErrBadLayer and ErrUnsafeEntry come from the flattener: a corrupt
	// layer, and an entry that would escape the image root.
	ErrBadLayer    = flatten.ErrBadLayer
	ErrUnsafeEntry = flatten.ErrUnsafeEntry
)

// Stages reported through Progress.
const (
	StageResolve  = "resolve"
	StageDownload = "download"
	StageFlatten  = "flatten"
	StageExt4     = "ext4"
	StageInject   = "inject"
	StageDone     = "done"
)

// Progress is one progress report of a pull.
type Progress struct {
	Stage   string
	Layer   int // 1-based layer index, 0 when not about a layer
	Layers  int
	Digest  string
	Current int64 // bytes done
	Total   int64 // bytes expected, 0 when unknown
	Cached  bool  // the layer came from the blob cache
	Message string
}

// Result is a pulled image, built inside the request's directory.
type Result struct {
	Ref string // fully qualified reference, e.g. index.docker.io/library/alpine:3.20
	// Digest identifies the content: the manifest digest of the
	// linux/amd64 image for registries and OCI layouts, the config digest
	// (Docker's image ID) for docker save archives, the digest of the
	// uncompressed tar for root file system tarballs.
	Digest    string
	Kind      string // KindRegistry, KindDockerArchive, KindOCILayout or KindRootfs
	Config    api.ImageConfig
	Layers    []api.ImageLayer
	Rootfs    string // path of the ext4 file
	SizeBytes int64  // apparent size of the ext4 file
	DiskBytes int64  // bytes it occupies on disk
	Stats     Ext4Stats
}

// Request is one pull.
type Request struct {
	Ref string
	// Dir is an existing, empty directory the image is built in.
	Dir string
	// Assets are injected into the image.
	Assets GuestAgentAssets
	// Auth, when set, is used for the reference's registry instead of the
	// puller's keychain (the CLI resolves the user's own credentials).
	Auth *authn.AuthConfig
	// Progress, when set, receives reports. It must not block.
	Progress func(Progress)
}

// report passes a progress report to the request's callback, if any.
func (r Request) report(p Progress) {
	if r.Progress != nil {
		r.Progress(p)
	}
}

// Puller pulls images. It is safe for concurrent use.
type Puller struct {
	blobs     *BlobCache
	runner    system.CommandRunner
	keychain  authn.Keychain
	transport http.RoundTripper
	jobs      int
	headroom  Headroom
	log       *slog.Logger
}

// Option configures a Puller.
type Option func(*Puller) error

// WithKeychain sets where registry credentials come from. Default:
// authn.DefaultKeychain (Docker config and credential helpers).
func WithKeychain(k authn.Keychain) Option {
	return func(p *Puller) error { p.keychain = k; return nil }
}

// WithTransport sets the HTTP transport. Default: remote.DefaultTransport.
func WithTransport(t http.RoundTripper) Option {
	return func(p *Puller) error { p.transport = t; return nil }
}

// WithJobs sets how many layers download at once. Default 3.
func WithJobs(n int) Option {
	return func(p *Puller) error {
		if n < 1 {
			return fmt.Errorf("jobs must be at least 1, got %d", n)
		}
		p.jobs = n
		return nil
	}
}

// WithHeadroom sets the free space and inodes left in images. Default
// DefaultHeadroom.
func WithHeadroom(h Headroom) Option {
	return func(p *Puller) error { p.headroom = h; return nil }
}

// WithLogger sets the logger. Default: discard.
func WithLogger(l *slog.Logger) Option {
	return func(p *Puller) error { p.log = l; return nil }
}

// New returns a Puller caching blobs in blobsDir and running host tools
// (debugfs, tune2fs, e2fsck, resize2fs) through runner.
func New(blobsDir string, runner system.CommandRunner, opts ...Option) (*Puller, error) {
	blobs, err := NewBlobCache(blobsDir)
	if err != nil {
		return nil, err
	}
	p := &Puller{
		blobs:     blobs,
		runner:    runner,
		keychain:  authn.DefaultKeychain,
		transport: remote.DefaultTransport,
		jobs:      3,
		headroom:  DefaultHeadroom,
		log:       slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		if err := o(p); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Blobs returns the puller's blob cache.
func (p *Puller) Blobs() *BlobCache { return p.blobs }

// layerJob is the download state of one layer.
type layerJob struct {
	desc api.ImageLayer
	done chan struct{}
	path string
	err  error
}

// fetched is an image's layers, flattened, with what the image says of
// itself. close removes the spool the tree's contents live in.
type fetched struct {
	ref    name.Reference
	digest v1.Hash
	cfg    *v1.ConfigFile
	jobs   []*layerJob
	tree   *flatten.Tree
	spool  *os.File
	closed bool
}

// newFetched starts an empty tree whose file contents spool to a new
// file in dir.
func newFetched(dir string) (*fetched, error) {
	spool, err := os.CreateTemp(dir, ".spool-*")
	if err != nil {
		return nil, fsError("creating spool", err)
	}
	return &fetched{tree: flatten.New(spool), spool: spool}, nil
}

func (f *fetched) close() {
	if !f.closed {
		f.closed = true
		f.spool.Close()
		os.Remove(f.spool.Name())
	}
}

// fetch resolves req.Ref, downloads its layers (in parallel, through the
// blob cache) and flattens them in order, spooling file contents in
// req.Dir. The caller closes the result.
func (p *Puller) fetch(ctx context.Context, req Request, report func(Progress)) (_ *fetched, err error) {
	report(Progress{Stage: StageResolve, Message: req.Ref})
	r, err := ParseReference(req.Ref)
	if err != nil {
		return nil, err
	}
	img, err := p.image(ctx, r, req.Auth)
	if err != nil {
		return nil, err
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, registryError(r, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, registryError(r, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, registryError(r, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(layers) {
		return nil, fmt.Errorf("%s: config lists %d layers, manifest %d: the image is malformed", FamiliarName(r), len(cfg.RootFS.DiffIDs), len(layers))
	}

	jobs := make([]*layerJob, len(layers))
	for i, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return nil, registryError(r, err)
		}
		size, err := l.Size()
		if err != nil {
			return nil, registryError(r, err)
		}
		jobs[i] = &layerJob{desc: api.ImageLayer{Digest: d.String(), DiffID: cfg.RootFS.DiffIDs[i].String(), Size: size}, done: make(chan struct{})}
	}

	blobs, err := p.blobClient(ctx, r, req.Auth)
	if err != nil {
		return nil, err
	}
	// Download layers in parallel while flattening them in order.
	dctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	// Announce every layer first, so progress shows the whole size.
	for i, j := range jobs {
		report(Progress{Stage: StageDownload, Layer: i + 1, Layers: len(jobs), Digest: j.desc.Digest, Total: j.desc.Size})
	}
	sem := make(chan struct{}, p.jobs)
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(j.done)
			select {
			case sem <- struct{}{}:
			case <-dctx.Done():
				j.err = context.Cause(dctx)
				return
			}
			defer func() { <-sem }()
			j.path, j.err = p.fetchLayer(dctx, r, blobs, i, len(jobs), j, report)
		}()
	}

	f, err := newFetched(req.Dir)
	if err != nil {
		return nil, err
	}
	f.ref, f.digest, f.cfg, f.jobs = r, digest, cfg, jobs
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	tree := f.tree
	for i, j := range jobs {
		select {
		case <-j.done:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
		if j.err != nil {
			return nil, j.err
		}
		report(Progress{Stage: StageFlatten, Layer: i + 1, Layers: len(jobs), Digest: j.desc.Digest, Total: j.desc.Size})
		if err := p.flattenLayer(ctx, tree, j); err != nil {
			if errors.Is(err, ErrBadLayer) || errors.Is(err, ErrDigestMismatch) {
				// The blob matched its digest when it was cached, so a
				// bad stream now means a corrupt copy (or a lying image
				// config): drop it so the next pull fetches it afresh.
				p.blobs.Remove(j.desc.Digest)
				err = fmt.Errorf("%w (the cached blob was removed)", err)
			}
			return nil, fmt.Errorf("layer %d/%d (%s): %w", i+1, len(jobs), short(j.desc.Digest), err)
		}
	}
	return f, nil
}

// Pull pulls req.Ref and builds its root file system in req.Dir. On error
// req.Dir may hold partial files; the caller removes the directory.
func (p *Puller) Pull(ctx context.Context, req Request) (*Result, error) {
	f, err := p.fetch(ctx, req, req.report)
	if err != nil {
		return nil, err
	}
	defer f.close()
	res, err := p.finish(ctx, f, req.Dir, req.Assets, req.report)
	if err != nil {
		return nil, err
	}
	res.Ref = f.ref.Name()
	res.Digest = f.digest.String()
	res.Kind = KindRegistry
	res.Config = configOf(f.cfg)
	req.report(Progress{Stage: StageDone, Message: res.Digest})
	return res, nil
}

// configOf is the part of an image config a VM needs.
func configOf(cfg *v1.ConfigFile) api.ImageConfig {
	return api.ImageConfig{
		Entrypoint: cfg.Config.Entrypoint,
		Cmd:        cfg.Config.Cmd,
		Env:        cfg.Config.Env,
		WorkingDir: cfg.Config.WorkingDir,
		User:       cfg.Config.User,
	}
}

// finish turns a flattened tree into the image's ext4 in dir: banger's
// own guest files replace any the image carries, the ext4 is written,
// the spool is freed and the guest agents are injected. The result has
// the rootfs, its sizes and the layers; the caller fills in the rest.
func (p *Puller) finish(ctx context.Context, f *fetched, dir string, assets GuestAgentAssets, report func(Progress)) (*Result, error) {
	tree := f.tree
	for _, gp := range InjectedPaths() {
		tree.Remove(gp)
	}
	report(Progress{Stage: StageExt4, Message: fmt.Sprintf("%d entries", tree.Entries())})
	rootfs := filepath.Join(dir, "rootfs.ext4")
	if _, err := BuildExt4(ctx, p.runner, tree, rootfs, p.headroom); err != nil {
		return nil, fsError("building ext4", err)
	}
	// The spool is no longer needed; free its space before injecting.
	f.close()

	report(Progress{Stage: StageInject})
	if err := InjectGuestAgents(ctx, p.runner, rootfs, assets); err != nil {
		return nil, fsError("injecting guest agents", err)
	}
	stats, err := readSuperBlock(rootfs)
	if err != nil {
		return nil, err
	}
	res := &Result{Rootfs: rootfs, SizeBytes: stats.SizeBytes, DiskBytes: diskUsage(rootfs), Stats: stats}
	for _, j := range f.jobs {
		res.Layers = append(res.Layers, j.desc)
	}
	return res, nil
}

// ExtractFiles pulls req.Ref like Pull but, instead of building an image,
// copies the regular files whose image paths (relative, as "boot/vmlinux")
// match into dst under the same relative paths. It returns the paths it
// wrote. Kernels shipped as OCI images come out this way.
func (p *Puller) ExtractFiles(ctx context.Context, req Request, dst string, match func(string) bool) ([]string, error) {
	f, err := p.fetch(ctx, req, req.report)
	if err != nil {
		return nil, err
	}
	defer f.close()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(f.tree.WriteTar(pw)) }()
	defer pr.Close()
	tr := tar.NewReader(pr)
	var out []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if !match(h.Name) || (h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeLink) {
			continue
		}
		// The flattener wrote clean relative paths; Join keeps them in dst.
		target := filepath.Join(dst, filepath.FromSlash(h.Name))
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return nil, fsError("extracting", err)
		}
		if h.Typeflag == tar.TypeLink {
			if !match(h.Linkname) {
				continue
			}
			if err := os.Link(filepath.Join(dst, filepath.FromSlash(h.Linkname)), target); err != nil {
				return nil, fsError("extracting", err)
			}
		} else {
			w, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			if err != nil {
				return nil, fsError("extracting", err)
			}
			_, err = io.Copy(w, tr)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, fsError("extracting", err)
			}
		}
		out = append(out, h.Name)
	}
}

func (p *Puller) fetchLayer(ctx context.Context, r name.Reference, c *http.Client, i, n int, j *layerJob, report func(Progress)) (string, error) {
	pr := Progress{Stage: StageDownload, Layer: i + 1, Layers: n, Digest: j.desc.Digest, Total: j.desc.Size}
	if p.blobs.Has(j.desc.Digest) {
		pr.Cached, pr.Current = true, j.desc.Size
		report(pr)
		return p.blobs.Path(j.desc.Digest)
	}
	report(pr)
	path, err := p.blobs.Put(ctx, j.desc.Digest, j.desc.Size, func() (io.ReadCloser, error) {
		return openBlob(ctx, c, r, j.desc.Digest)
	}, func(cur int64) {
		pr.Current = cur
		report(pr)
	})
	if err != nil {
		switch {
		case errors.Is(err, ErrDigestMismatch):
			return "", fmt.Errorf("layer %d/%d (%s) from %s: %w: the registry served corrupt data; pull again or report it to the registry owner",
				i+1, n, short(j.desc.Digest), r.Context().RegistryStr(), err)
		case errors.Is(err, ErrTruncated):
			return "", fmt.Errorf("layer %d/%d (%s) from %s: %w: pull again", i+1, n, short(j.desc.Digest), r.Context().RegistryStr(), err)
		case isWriteErr(err):
			return "", fsError("caching layer", err)
		}
		return "", fmt.Errorf("layer %d/%d (%s): %w", i+1, n, short(j.desc.Digest), err)
	}
	return path, nil
}

// flattenLayer decompresses a cached layer into the tree and checks the
// uncompressed stream against the config's diff ID.
func (p *Puller) flattenLayer(ctx context.Context, tree *flatten.Tree, j *layerJob) error {
	f, err := os.Open(j.path)
	if err != nil {
		return fmt.Errorf("opening cached layer: %w", err)
	}
	defer f.Close()
	// A layer of a docker save archive is named by path, not digest:
	// its blob digest is learnt while reading it.
	var raw io.Reader = f
	var blobHash *asyncHasher
	if j.desc.Digest == "" {
		blobHash = newAsyncHasher()
		raw = io.TeeReader(f, blobHash)
		defer func() { j.desc.Digest = blobHash.Sum() }()
	}
	rc, err := decompress(bufio.NewReaderSize(raw, 1<<20))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadLayer, err)
	}
	defer rc.Close()
	// The diff ID is hashed on another core while this one decompresses
	// and flattens.
	h := newAsyncHasher()
	hr := io.TeeReader(&ctxReader{ctx: ctx, r: rc}, h)
	if err := tree.AddLayer(hr); err != nil {
		h.Sum()
		return err
	}
	// Hash any padding after the end of the archive too.
	if _, err := io.Copy(io.Discard, hr); err != nil {
		h.Sum()
		return fmt.Errorf("%w: reading layer: %v", ErrBadLayer, err)
	}
	if blobHash != nil {
		if _, err := io.Copy(io.Discard, raw); err != nil {
			h.Sum()
			return fmt.Errorf("reading layer: %w", err)
		}
	}
	if got := h.Sum(); got != j.desc.DiffID {
		return fmt.Errorf("%w: uncompressed content hashes to %s, config says %s", ErrDigestMismatch, short(got), short(j.desc.DiffID))
	}
	return nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, context.Cause(c.ctx)
	}
	return c.r.Read(p)
}

// fsError adds advice to a full disk.
func fsError(doing string, err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("%s: %w: free disk space under banger's state and cache directories (`banger image cache prune`) and pull again", doing, ErrNoSpace)
	}
	return fmt.Errorf("%s: %w", doing, err)
}

func short(digest string) string {
	if _, h, ok := strings.Cut(digest, ":"); ok && len(h) > 12 {
		return digest[:len(digest)-len(h)] + h[:12]
	}
	return digest
}

func diskUsage(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}
