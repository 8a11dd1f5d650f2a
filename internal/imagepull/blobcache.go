package imagepull

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrDigestMismatch means a blob's content does not hash to its digest.
var ErrDigestMismatch = errors.New("digest mismatch")

// ErrTruncated means a blob ended before its announced size.
var ErrTruncated = errors.New("truncated blob")

// BlobCache keeps compressed OCI blobs by digest under one directory,
// shared by every image. A blob is only ever visible under its final name
// after its size and sha256 were verified: it is written to a temp file in
// the same directory and renamed. It is not fsynced: every use checks the
// uncompressed content against the image's diff ID, and a blob that a
// crash left damaged fails that check and is removed (Puller does this).
// Safe for concurrent use by several processes.
type BlobCache struct {
	dir string
}

// NewBlobCache returns a cache rooted at dir, creating it if needed.
func NewBlobCache(dir string) (*BlobCache, error) {
	if err := os.MkdirAll(filepath.Join(dir, "sha256"), 0o755); err != nil {
		return nil, fmt.Errorf("creating blob cache: %w", err)
	}
	return &BlobCache{dir: dir}, nil
}

// Path is where the blob with digest ("sha256:HEX") lives.
func (c *BlobCache) Path(digest string) (string, error) {
	algo, hexPart, ok := strings.Cut(digest, ":")
	if !ok || algo != "sha256" || len(hexPart) != 64 {
		return "", fmt.Errorf("unsupported digest %q: only sha256 is supported", digest)
	}
	if _, err := hex.DecodeString(hexPart); err != nil {
		return "", fmt.Errorf("invalid digest %q", digest)
	}
	return filepath.Join(c.dir, "sha256", hexPart), nil
}

// Has reports whether the blob is cached.
func (c *BlobCache) Has(digest string) bool {
	p, err := c.Path(digest)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

// Put stores the blob read from open() under digest, verifying size and
// sha256 while it streams. progress, when set, is called with the bytes
// read so far. A failed Put leaves nothing behind.
func (c *BlobCache) Put(ctx context.Context, digest string, size int64, open func() (io.ReadCloser, error), progress func(int64)) (string, error) {
	final, err := c.Path(digest)
	if err != nil {
		return "", err
	}
	if c.Has(digest) {
		return final, nil
	}
	rc, err := open()
	if err != nil {
		return "", err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Dir(final), ".tmp-*")
	if err != nil {
		return "", fmt.Errorf("writing blob cache: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	n, err := copyCtx(ctx, io.MultiWriter(tmp, h), rc, progress)
	if err != nil && !isWriteErr(err) && ctx.Err() == nil {
		// Judge by what arrived, not by the client's wording: the registry
		// client verifies too and may fail first at EOF.
		got := "sha256:" + hex.EncodeToString(h.Sum(nil))
		switch {
		case n < size:
			return "", fmt.Errorf("%w: connection ended after %d of %d bytes", ErrTruncated, n, size)
		case got != digest:
			return "", fmt.Errorf("%w: content hashes to %s", ErrDigestMismatch, short(got))
		}
	}
	if err != nil {
		return "", err
	}
	if n != size && size > 0 {
		if n < size {
			return "", fmt.Errorf("%w: got %d of %d bytes", ErrTruncated, n, size)
		}
		return "", fmt.Errorf("%w: got %d bytes, manifest says %d", ErrDigestMismatch, n, size)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest {
		return "", fmt.Errorf("%w: content hashes to %s", ErrDigestMismatch, short(got))
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("writing blob cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", fmt.Errorf("writing blob cache: %w", err)
	}
	ok = true
	return final, nil
}

// writeError marks an error from the destination of a copy.
type writeError struct{ err error }

func (e writeError) Error() string { return "writing blob cache: " + e.err.Error() }
func (e writeError) Unwrap() error { return e.err }

func isWriteErr(err error) bool {
	var we writeError
	return errors.As(err, &we)
}

// copyCtx copies src to dst until EOF, checking ctx between chunks and
// reporting progress at most every 100ms. Destination failures come back
// as writeError.
func copyCtx(ctx context.Context, dst io.Writer, src io.Reader, progress func(int64)) (int64, error) {
	buf := make([]byte, 256<<10)
	var n int64
	last := time.Now()
	for {
		if err := ctx.Err(); err != nil {
			return n, context.Cause(ctx)
		}
		r, rerr := src.Read(buf)
		if r > 0 {
			if _, werr := dst.Write(buf[:r]); werr != nil {
				return n, writeError{werr}
			}
			n += int64(r)
			if progress != nil && time.Since(last) > 100*time.Millisecond {
				progress(n)
				last = time.Now()
			}
		}
		if rerr == io.EOF {
			if progress != nil {
				progress(n)
			}
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// Prune removes every cached blob whose digest is not in keep, and any
// temp file older than an hour (a crashed download). It returns how many
// blobs went and the bytes freed.
func (c *BlobCache) Prune(keep map[string]bool) (removed int, freed int64, err error) {
	dir := filepath.Join(c.dir, "sha256")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, fmt.Errorf("reading blob cache: %w", err)
	}
	for _, e := range entries {
		info, ierr := e.Info()
		if ierr != nil {
			continue
		}
		if strings.HasPrefix(e.Name(), ".tmp-") {
			if time.Since(info.ModTime()) < time.Hour {
				continue
			}
		} else if keep["sha256:"+e.Name()] {
			continue
		}
		if rerr := os.Remove(filepath.Join(dir, e.Name())); rerr != nil {
			err = errors.Join(err, rerr)
			continue
		}
		removed++
		freed += info.Size()
	}
	return removed, freed, err
}

// Remove drops a blob from the cache; a missing blob is not an error.
func (c *BlobCache) Remove(digest string) error {
	p, err := c.Path(digest)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// asyncHasher computes a sha256 on its own goroutine: Write copies the
// bytes and returns at once (until 16 chunks are queued), Sum waits for
// the hash. Not safe for concurrent writers.
type asyncHasher struct {
	ch   chan []byte
	done chan struct{}
	free chan []byte
	h    hash.Hash
	sum  string
}

const hashChunk = 256 << 10

func newAsyncHasher() *asyncHasher {
	a := &asyncHasher{ch: make(chan []byte, 16), done: make(chan struct{}), free: make(chan []byte, 18), h: sha256.New()}
	go func() {
		defer close(a.done)
		for b := range a.ch {
			a.h.Write(b)
			select {
			case a.free <- b[:cap(b)]:
			default:
			}
		}
	}()
	return a
}

func (a *asyncHasher) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		var buf []byte
		select {
		case buf = <-a.free:
		default:
			buf = make([]byte, hashChunk)
		}
		k := copy(buf, p)
		a.ch <- buf[:k]
		p = p[k:]
	}
	return n, nil
}

// Sum finishes the hash and returns "sha256:HEX". Call it exactly once.
func (a *asyncHasher) Sum() string {
	close(a.ch)
	<-a.done
	return "sha256:" + hex.EncodeToString(a.h.Sum(nil))
}

// RemoveTemps removes every unfinished download. Call it only when no
// pull can be running, as the daemon does at start.
func (c *BlobCache) RemoveTemps() (int, error) {
	dir := filepath.Join(c.dir, "sha256")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("reading blob cache: %w", err)
	}
	n := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}
