package debarchive

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/ulikunitz/xz"

	"banger/internal/system"
)

// DefaultKeyring is the Debian archive keyring of Debian hosts (package
// debian-archive-keyring).
const DefaultKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// ErrUnverified means an archive file's signature or hash did not check.
var ErrUnverified = errors.New("archive index failed verification")

// ErrUnreachable means the archive could not be read.
var ErrUnreachable = errors.New("package archive unreachable")

// Archive reads one Debian archive's suites. It is safe for concurrent
// use when its fields are not changed.
type Archive struct {
	// Client fetches; nil means http.DefaultClient.
	Client *http.Client
	// Runner runs gpgv.
	Runner system.CommandRunner
	// Keyring verifies InRelease files. Default DefaultKeyring.
	Keyring string
	// CacheDir keeps package indexes by hash, so a suite whose index did
	// not change costs one InRelease download. "" disables the cache.
	CacheDir string
}

// Package is one stanza of a package index.
type Package struct {
	Name     string
	Version  string
	Filename string // relative to the archive's base URL
	Size     int64
	SHA256   string
	// URL is the archive's base URL joined with Filename.
	URL string
	// Suite is the suite whose index listed it.
	Suite string
}

// Packages returns the packages of base's suite/component for arch whose
// names match re. The suite's InRelease is verified with gpgv and the
// index is checked against the hash it gives.
func (a *Archive) Packages(ctx context.Context, base, suite, component, arch string, re *regexp.Regexp) ([]Package, error) {
	base = strings.TrimSuffix(base, "/")
	release, err := a.release(ctx, base, suite)
	if err != nil {
		return nil, err
	}
	idx, err := a.index(ctx, base, suite, release, component+"/binary-"+arch+"/Packages")
	if err != nil {
		return nil, err
	}
	pkgs, err := parsePackages(idx, re)
	if err != nil {
		return nil, fmt.Errorf("reading %s %s index: %w", base, suite, err)
	}
	for i := range pkgs {
		pkgs[i].URL = base + "/" + pkgs[i].Filename
		pkgs[i].Suite = suite
	}
	return pkgs, nil
}

// release downloads dists/SUITE/InRelease and returns its signed text,
// as gpgv wrote it out: only what the signature covers.
func (a *Archive) release(ctx context.Context, base, suite string) ([]byte, error) {
	u := base + "/dists/" + suite + "/InRelease"
	body, err := a.get(ctx, u, 1<<24)
	if err != nil {
		return nil, err
	}
	keyring := a.Keyring
	if keyring == "" {
		keyring = DefaultKeyring
	}
	if _, err := os.Stat(keyring); err != nil {
		return nil, fmt.Errorf("%w: %s: the archive keyring %s is missing: `apt-get install debian-archive-keyring gpgv`", ErrUnverified, u, keyring)
	}
	tmp, err := os.MkdirTemp("", "banger-release-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	in, out := filepath.Join(tmp, "InRelease"), filepath.Join(tmp, "Release")
	if err := os.WriteFile(in, body, 0o600); err != nil {
		return nil, err
	}
	if _, err := a.Runner.Run(ctx, "gpgv", "--keyring", keyring, "--output", out, in); err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, fmt.Errorf("%w: %s: gpgv refused its signature (%v): the mirror may be tampered with or stale; try again or use another mirror", ErrUnverified, u, err)
	}
	return os.ReadFile(out)
}

// releaseHashRE is a line of a Release file's SHA256 section.
var releaseHashRE = regexp.MustCompile(`^ ([0-9a-f]{64})\s+(\d+)\s+(\S+)$`)

// index fetches the index at path (without compression suffix) in the
// form the Release file lists (xz, gzip or plain, in that order of
// preference), checks its size and hash, and returns it uncompressed.
func (a *Archive) index(ctx context.Context, base, suite string, release []byte, path string) ([]byte, error) {
	type entry struct {
		sum  string
		size int64
	}
	listed := map[string]entry{}
	inSHA := false
	for _, line := range strings.Split(string(release), "\n") {
		if !strings.HasPrefix(line, " ") {
			inSHA = strings.HasPrefix(line, "SHA256:")
			continue
		}
		if m := releaseHashRE.FindStringSubmatch(line); inSHA && m != nil {
			n, _ := strconv.ParseInt(m[2], 10, 64)
			listed[m[3]] = entry{m[1], n}
		}
	}
	for _, ext := range []string{".xz", ".gz", ""} {
		e, ok := listed[path+ext]
		if !ok {
			continue
		}
		// Decompressing the main suite's index takes longer than
		// fetching InRelease: keep the plain text beside the file it came
		// from, under that file's verified hash.
		plainCache := ""
		if a.CacheDir != "" && ext != "" {
			plainCache = filepath.Join(a.CacheDir, e.sum+".plain")
			if b, err := os.ReadFile(plainCache); err == nil {
				return b, nil
			}
		}
		raw, err := a.cached(ctx, base+"/dists/"+suite+"/"+path+ext, e.sum, e.size)
		if err != nil {
			return nil, err
		}
		var r io.Reader
		switch ext {
		case ".xz":
			r, err = xz.NewReader(bytes.NewReader(raw))
		case ".gz":
			r, err = gzip.NewReader(bytes.NewReader(raw))
		default:
			return raw, nil
		}
		var plain []byte
		if err == nil {
			plain, err = io.ReadAll(r)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s%s: %v", ErrUnverified, path, ext, err)
		}
		writeCache(plainCache, plain)
		return plain, nil
	}
	return nil, fmt.Errorf("%w: %s/dists/%s/Release lists no %s", ErrUnverified, base, suite, path)
}

// cached returns the file at u with the given hash and size, from the
// cache when it holds it, else downloaded, checked and cached.
func (a *Archive) cached(ctx context.Context, u, sum string, size int64) ([]byte, error) {
	var cachePath string
	if a.CacheDir != "" {
		cachePath = filepath.Join(a.CacheDir, sum)
		if b, err := os.ReadFile(cachePath); err == nil && hashOf(b) == sum {
			return b, nil
		}
	}
	b, err := a.get(ctx, u, size+1)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) != size || hashOf(b) != sum {
		return nil, fmt.Errorf("%w: %s: got %d bytes hashing to %s, the signed Release says %d bytes, %s", ErrUnverified, u, len(b), short(hashOf(b)), size, short(sum))
	}
	writeCache(cachePath, b)
	return b, nil
}

// writeCache stores b at p ("" for no cache) by rename, so a reader never
// sees half a file. A cache that cannot be written is no error.
func writeCache(p string, b []byte) {
	if p == "" || os.MkdirAll(filepath.Dir(p), 0o755) != nil {
		return
	}
	tmp := p + ".tmp"
	if os.WriteFile(tmp, b, 0o644) == nil {
		os.Rename(tmp, p)
	}
}

func (a *Archive) get(ctx context.Context, u string, max int64) ([]byte, error) {
	c := a.Client
	if c == nil {
		c = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, fmt.Errorf("%w: %s: %v: check your network, or the mirror in /etc/apt/sources.list.d", ErrUnreachable, u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: %s answered HTTP %d", ErrUnreachable, u, resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, max))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, u, err)
	}
	return b, nil
}

// parsePackages reads the stanzas of a Packages index whose Package
// field matches re.
func parsePackages(idx []byte, re *regexp.Regexp) ([]Package, error) {
	var out []Package
	sc := bufio.NewScanner(bytes.NewReader(idx))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var cur Package
	keep := false
	flush := func() error {
		if keep {
			if cur.Version == "" || cur.Filename == "" || len(cur.SHA256) != 64 || cur.Size <= 0 {
				return fmt.Errorf("%w: stanza of %s lacks Version, Filename, Size or SHA256", ErrUnverified, cur.Name)
			}
			if strings.Contains(cur.Filename, "..") || strings.HasPrefix(cur.Filename, "/") {
				return fmt.Errorf("%w: %s has a bad Filename %q", ErrUnverified, cur.Name, cur.Filename)
			}
			out = append(out, cur)
		}
		cur, keep = Package{}, false
		return nil
	}
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		k, v, ok := strings.Cut(line, ": ")
		if !ok || strings.HasPrefix(line, " ") {
			continue
		}
		switch k {
		case "Package":
			cur.Name, keep = v, re.MatchString(v)
		case "Version":
			cur.Version = v
		case "Filename":
			cur.Filename = v
		case "Size":
			cur.Size, _ = strconv.ParseInt(v, 10, 64)
		case "SHA256":
			cur.SHA256 = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// Newest is the package with the highest version, ties going to the
// first listed; ok is false for none.
func Newest(pkgs []Package) (Package, bool) {
	if len(pkgs) == 0 {
		return Package{}, false
	}
	best := pkgs[0]
	for _, p := range pkgs[1:] {
		if CompareVersions(p.Version, best.Version) > 0 {
			best = p
		}
	}
	return best, true
}

func hashOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	return sum
}
