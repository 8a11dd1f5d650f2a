package imagepull

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/imagepull/flatten"
)

// Where an image came from (Result.Kind).
const (
	KindRegistry      = "registry"
	KindDockerArchive = "docker-archive"
	KindOCILayout     = "oci-layout"
	KindRootfs        = "rootfs"
)

// StageReceive reports the bytes of an import's source read so far.
const StageReceive = "receive"

// ErrBadSource means an import's input is none of the formats banger
// reads, or is truncated or self-contradictory.
var ErrBadSource = errors.New("unusable import source")

// ErrAmbiguous means an archive or layout holds several images and the
// request did not say which one to import.
var ErrAmbiguous = errors.New("several images in the source")

// ImportRequest is one import of a local source.
type ImportRequest struct {
	// Source is the stream to import: a docker save archive, an OCI image
	// layout as a tar, or a root file system tarball; uncompressed or
	// gzip, xz, zstd or bzip2. The kind is told by content.
	Source io.Reader
	// Dir is an existing, empty directory the image is built in.
	Dir string
	// Ref picks one image of an archive or layout that holds several:
	// a tag it lists ("alpine:3.20", "docker.io/library/alpine:3.20").
	Ref string
	// Config changes the image's configuration after it is read.
	Config ConfigOverride
	// Assets are injected into the image.
	Assets GuestAgentAssets
	// Progress, when set, receives reports. It must not block.
	Progress func(Progress)
}

func (r ImportRequest) report(p Progress) {
	if r.Progress != nil {
		r.Progress(p)
	}
}

// ConfigOverride sets parts of an image's configuration. Empty fields
// keep what the image says; Env entries replace variables of the same
// name and add the others.
type ConfigOverride api.ImageConfig

// Apply returns cfg with the override applied.
func (o ConfigOverride) Apply(cfg api.ImageConfig) api.ImageConfig {
	if o.Entrypoint != nil {
		cfg.Entrypoint = o.Entrypoint
		// As with docker run --entrypoint: the image's cmd was written
		// for its own entrypoint.
		if o.Cmd == nil {
			cfg.Cmd = nil
		}
	}
	if o.Cmd != nil {
		cfg.Cmd = o.Cmd
	}
	if o.WorkingDir != "" {
		cfg.WorkingDir = o.WorkingDir
	}
	if o.User != "" {
		cfg.User = o.User
	}
	if len(o.Env) > 0 {
		cfg.Env = append([]string(nil), cfg.Env...) // not the caller's array
	}
	for _, kv := range o.Env {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, old := range cfg.Env {
			if ok, _, _ := strings.Cut(old, "="); ok == k {
				cfg.Env[i], replaced = kv, true
			}
		}
		if !replaced {
			cfg.Env = append(cfg.Env, kv)
		}
	}
	return cfg
}

// Validate reports every malformed field.
func (o ConfigOverride) Validate() error {
	var errs []error
	for _, kv := range o.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			errs = append(errs, fmt.Errorf("--env %q: want KEY=VALUE", kv))
		}
	}
	if o.WorkingDir != "" && !strings.HasPrefix(o.WorkingDir, "/") {
		errs = append(errs, fmt.Errorf("--workdir %q: want an absolute path", o.WorkingDir))
	}
	return errors.Join(errs...)
}

// defaultPath is what a root file system tarball, which has no image
// config, gets as PATH.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// archiveEntryRE matches the first entry names of docker save archives
// (legacy "HEX/", "HEX.json"; go-containerregistry's "sha256:HEX" and
// "HEX.tar.gz"; Docker 25's OCI form) and OCI layouts. No root file
// system starts like this.
var archiveEntryRE = regexp.MustCompile(`^(\./)?(blobs(/|$)|oci-layout$|index\.json$|manifest\.json$|repositories$|sha256:[0-9a-f]{64}$|[0-9a-f]{64}(/|\.json$|\.tar(\.gz)?$|$))`)

// Import builds an image from req.Source in req.Dir through the same
// steps as Pull. On error req.Dir may hold partial files; the caller
// removes the directory.
func (p *Puller) Import(ctx context.Context, req ImportRequest) (*Result, error) {
	if err := req.Config.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSource, err)
	}
	counted := &receiveReader{r: &ctxReader{ctx: ctx, r: req.Source}, report: req.report, stage: StageReceive}
	raw, err := decompress(bufio.NewReaderSize(counted, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSource, err)
	}
	defer raw.Close()
	end := &endReader{r: raw}
	br := bufio.NewReaderSize(end, 1<<20)
	head, _ := br.Peek(64 << 10)
	if len(head) == 0 {
		if err := counted.err; err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: the input is empty: give a file, a directory, or a stream on standard input", ErrBadSource)
	}
	first, err := tar.NewReader(bytes.NewReader(head)).Next()
	if err == io.EOF {
		return nil, fmt.Errorf("%w: the tar archive holds no files", ErrBadSource)
	}
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, context.Cause(ctx)
		}
		return nil, fmt.Errorf("%w: the input is not a tar archive (%v): import takes a docker save archive, an OCI image layout or a root file system tarball, uncompressed or gzip, xz, zstd or bzip2", ErrBadSource, err)
	}
	var res *Result
	if archiveEntryRE.MatchString(first.Name) {
		res, err = p.importArchive(ctx, req, br, end.check)
	} else {
		// A tarball is flattened as it arrives: the bytes read are
		// that stage's progress.
		counted.stage = StageFlatten
		res, err = p.importRootfs(ctx, req, br, end.check)
	}
	if err != nil {
		return nil, err
	}
	req.report(Progress{Stage: StageDone, Message: res.Digest})
	return res, nil
}

// importRootfs streams a root file system tarball straight into the
// flattener: one layer, no image config.
func (p *Puller) importRootfs(ctx context.Context, req ImportRequest, r io.Reader, checkEnd func() error) (*Result, error) {
	f, err := newFetched(req.Dir)
	if err != nil {
		return nil, err
	}
	defer f.close()
	req.report(Progress{Stage: StageFlatten, Layer: 1, Layers: 1, Message: KindRootfs})
	h := newAsyncHasher()
	hr := io.TeeReader(r, h)
	if err := f.tree.AddLayer(hr); err != nil {
		h.Sum()
		return nil, sourceReadError("reading the root file system tarball", ctx, err)
	}
	// The rest of the stream (tar padding, a compressor's trailer) is
	// read too, so a bad checksum at the very end is still noticed.
	if _, err := io.Copy(io.Discard, hr); err != nil {
		h.Sum()
		return nil, sourceReadError("reading the root file system tarball", ctx, err)
	}
	diffID := h.Sum()
	if err := checkEnd(); err != nil {
		return nil, err
	}
	f.jobs = []*layerJob{{desc: api.ImageLayer{Digest: diffID, DiffID: diffID}}}

	cfg := api.ImageConfig{Env: []string{defaultPath}}
	if req.Config.Entrypoint == nil && req.Config.Cmd == nil {
		switch {
		case f.tree.Exists("bin/bash"):
			cfg.Cmd = []string{"/bin/bash"}
		case f.tree.Exists("bin/sh"):
			cfg.Cmd = []string{"/bin/sh"}
		case f.tree.Exists("manifest.json") || f.tree.Exists("index.json"):
			return nil, fmt.Errorf("%w: the tarball has a manifest.json or index.json but none of the layouts banger knows: export it with `docker save` or as an OCI layout", ErrBadSource)
		default:
			return nil, fmt.Errorf("%w: the tarball has no /bin/sh, so it is no root file system banger can start: give the command to run with --cmd", ErrBadSource)
		}
	}
	res, err := p.finish(ctx, f, req.Dir, req.Assets, req.report)
	if err != nil {
		return nil, err
	}
	res.Kind, res.Digest = KindRootfs, diffID
	res.Config = req.Config.Apply(cfg)
	return res, nil
}

// sourceReadError says that the input ended or broke, unless the import
// was cancelled.
func sourceReadError(doing string, ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if errors.Is(err, ErrUnsafeEntry) {
		return fmt.Errorf("%s: %w", doing, err)
	}
	if isWriteErr(err) || errors.Is(err, ErrNoSpace) {
		return fsError(doing, err)
	}
	return fmt.Errorf("%w: %s: %v: the input is truncated or corrupt", ErrBadSource, doing, err)
}

// endReader remembers the last bytes of a stream, so that a tar archive
// cut at an entry boundary, which a tar reader takes for a whole one, is
// still found out: every tar writer ends the archive with two zero
// blocks.
type endReader struct {
	r    io.Reader
	tail [1024]byte
	n    int64
}

func (e *endReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if n > 0 {
		if n >= len(e.tail) {
			copy(e.tail[:], p[n-len(e.tail):n])
		} else {
			copy(e.tail[:], e.tail[n:])
			copy(e.tail[len(e.tail)-n:], p[:n])
		}
		e.n += int64(n)
	}
	return n, err
}

// check fails unless the stream, read to its end, closed with the
// end-of-archive marker.
func (e *endReader) check() error {
	if e.n >= int64(len(e.tail)) && bytes.Count(e.tail[:], []byte{0}) == len(e.tail) {
		return nil
	}
	return fmt.Errorf("%w: the archive ends without tar's end-of-archive marker: the input is truncated", ErrBadSource)
}

// receiveReader counts the bytes read from an import's source and
// reports them a few times a second.
type receiveReader struct {
	r      io.Reader
	stage  string // the stage the reports are for
	n      int64
	last   time.Time
	err    error
	report func(Progress)
}

func (c *receiveReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil {
		c.err = err
	}
	if now := time.Now(); now.Sub(c.last) > 200*time.Millisecond || err != nil {
		c.last = now
		c.report(Progress{Stage: c.stage, Current: c.n})
	}
	return n, err
}

// archiveLink is a link entry of an archive, made once every file is there.
type archiveLink struct {
	name, target string
	symlink      bool
}

// importArchive extracts a docker save archive or an OCI layout into
// req.Dir/src, verifying every blob named by its digest while writing
// it, and builds the image it holds.
func (p *Puller) importArchive(ctx context.Context, req ImportRequest, r io.Reader, checkEnd func() error) (*Result, error) {
	src := filepath.Join(req.Dir, "src")
	if err := os.Mkdir(src, 0o700); err != nil {
		return nil, fsError("unpacking the archive", err)
	}
	// The unpacked archive is not needed once the ext4 exists; removing
	// it here keeps it out of the published image directory.
	defer os.RemoveAll(src)
	req.report(Progress{Stage: StageReceive, Message: "archive"})
	if err := extractArchive(ctx, r, src); err != nil {
		return nil, err
	}
	if err := checkEnd(); err != nil {
		return nil, err
	}
	var (
		img *archiveImage
		err error
	)
	switch {
	case fileExists(filepath.Join(src, "manifest.json")):
		img, err = readDockerArchive(src, req.Ref)
	case fileExists(filepath.Join(src, "index.json")):
		img, err = readOCILayout(src, req.Ref)
	default:
		err = fmt.Errorf("%w: the archive has neither manifest.json (docker save) nor index.json (OCI image layout)", ErrBadSource)
	}
	if err != nil {
		return nil, err
	}
	if err := checkPlatform(img.cfg, img.what); err != nil {
		return nil, err
	}
	if len(img.cfg.RootFS.DiffIDs) != len(img.layers) {
		return nil, fmt.Errorf("%w: %s: the config lists %d layers, the manifest %d", ErrBadSource, img.what, len(img.cfg.RootFS.DiffIDs), len(img.layers))
	}
	f, err := newFetched(req.Dir)
	if err != nil {
		return nil, err
	}
	defer f.close()
	for i, l := range img.layers {
		f.jobs = append(f.jobs, &layerJob{desc: api.ImageLayer{Digest: l.digest, DiffID: img.cfg.RootFS.DiffIDs[i].String(), Size: l.size}, path: l.path})
	}
	for i, j := range f.jobs {
		req.report(Progress{Stage: StageFlatten, Layer: i + 1, Layers: len(f.jobs), Digest: j.desc.Digest, Total: j.desc.Size})
		if err := p.flattenLayer(ctx, f.tree, j); err != nil {
			if errors.Is(err, ErrDigestMismatch) {
				err = fmt.Errorf("%w: the archive is corrupt or was edited", err)
			}
			return nil, fmt.Errorf("%s: layer %d/%d: %w", img.what, i+1, len(f.jobs), err)
		}
	}
	res, err := p.finish(ctx, f, req.Dir, req.Assets, req.report)
	if err != nil {
		return nil, err
	}
	res.Kind, res.Digest, res.Ref = img.kind, img.digest, img.ref
	res.Config = req.Config.Apply(configOf(img.cfg))
	return res, nil
}

// extractArchive writes the regular files of an archive below dir.
// Paths are checked like layer entries; links become hard links to the
// regular files they name (legacy docker save archives link duplicate
// layers). Blobs under blobs/ALG/HEX are checked against their names.
func extractArchive(ctx context.Context, r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	var links []archiveLink
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return sourceReadError("reading the archive", ctx, err)
		}
		name, err := archivePath(hdr.Name)
		if err != nil {
			return err
		}
		if name == "" {
			continue
		}
		target := filepath.Join(dir, filepath.FromSlash(name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o700); err != nil {
				return fsError("unpacking the archive", err)
			}
		case tar.TypeReg:
			if err := writeArchiveFile(ctx, tr, name, target); err != nil {
				return err
			}
		case tar.TypeSymlink, tar.TypeLink:
			l := archiveLink{name: name, target: hdr.Linkname, symlink: hdr.Typeflag == tar.TypeSymlink}
			if l.symlink {
				l.target = path.Join(path.Dir(name), hdr.Linkname)
			}
			links = append(links, l)
		}
	}
	// Tar padding and a compressor's trailer: a bad checksum at the end
	// must still fail the import.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return sourceReadError("reading the archive", ctx, err)
	}
	for _, l := range links {
		t, err := archivePath(l.target)
		if err != nil || t == "" {
			return fmt.Errorf("%w: archive link %q points outside the archive (%q)", ErrUnsafeEntry, l.name, l.target)
		}
		src := filepath.Join(dir, filepath.FromSlash(t))
		if fi, err := os.Lstat(src); err != nil || !fi.Mode().IsRegular() {
			continue // a link to a directory or to nothing: no image file is read through it
		}
		dst := filepath.Join(dir, filepath.FromSlash(l.name))
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return fsError("unpacking the archive", err)
		}
		os.Remove(dst)
		if err := os.Link(src, dst); err != nil {
			return fsError("unpacking the archive", err)
		}
	}
	return nil
}

// blobPathRE is where OCI layouts (and Docker 25's archives) keep blobs.
var blobPathRE = regexp.MustCompile(`^blobs/(sha256|sha512)/([0-9a-f]+)$`)

func writeArchiveFile(ctx context.Context, r io.Reader, name, target string) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
		return fsError("unpacking the archive", err)
	}
	w, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fsError("unpacking the archive", err)
	}
	defer w.Close()
	var dst io.Writer = writeErrWriter{w}
	m := blobPathRE.FindStringSubmatch(name)
	var h *asyncHasher
	if m != nil && m[1] == "sha256" {
		h = newAsyncHasher()
		dst = io.MultiWriter(dst, h)
	}
	_, err = io.Copy(dst, r)
	if h != nil {
		sum := h.Sum()
		if err == nil && sum != "sha256:"+m[2] {
			return fmt.Errorf("%w: blob %s of the archive hashes to %s: the archive is corrupt or was edited", ErrDigestMismatch, short("sha256:"+m[2]), short(sum))
		}
	}
	if err != nil {
		return sourceReadError("reading the archive", ctx, err)
	}
	if err := w.Close(); err != nil {
		return fsError("unpacking the archive", err)
	}
	return nil
}

// writeErrWriter marks write failures so they are told apart from a
// broken input stream.
type writeErrWriter struct{ w io.Writer }

func (w writeErrWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil {
		err = writeError{err}
	}
	return n, err
}

// archivePath cleans an archive entry name to a relative path, "" for
// the archive's root, with the same rules as layer entries.
func archivePath(name string) (string, error) { return flatten.CleanPath(name) }

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}
