package kernel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"banger/internal/api"
)

// ErrNoInstalledKernel means the host has no distribution kernel to use.
var ErrNoInstalledKernel = errors.New("no installed kernel")

// Catalog is the built-in list of downloadable kernels. Entries name a
// Debian suite and a package pattern rather than a file: the newest
// matching package is looked up in the archive's signed index at pull
// time (see Resolve), so an entry never goes stale when the archive
// moves on and removes the old file.
var Catalog = []api.CatalogKernel{
	{
		Name:        "debian-12-cloud",
		Description: "Debian 12 cloud kernel, the newest in bookworm and its security updates (virtio drivers as modules; banger packs an initramfs)",
		Suite:       "bookworm",
		Package:     `^linux-image-[0-9.]+-[0-9]+-cloud-amd64$`,
	},
}

// CatalogEntry finds name in Catalog plus the extra entries of the JSON
// file at extraPath (a list of api.CatalogKernel; "" for none), which
// take precedence: a private mirror can override an entry.
func CatalogEntry(name, extraPath string) (api.CatalogKernel, error) {
	entries, err := CatalogEntries(extraPath)
	if err != nil {
		return api.CatalogKernel{}, err
	}
	var names []string
	for _, e := range entries {
		if e.Name == name {
			return e, nil
		}
		names = append(names, e.Name)
	}
	return api.CatalogKernel{}, fmt.Errorf("no kernel %q in the catalog (known: %s): import a local one with `banger kernel import NAME --from PATH`", name, strings.Join(names, ", "))
}

// CatalogEntries is the extra entries followed by the built-in ones.
func CatalogEntries(extraPath string) ([]api.CatalogKernel, error) {
	var extra []api.CatalogKernel
	if extraPath != "" {
		b, err := os.ReadFile(extraPath)
		if err != nil {
			return nil, fmt.Errorf("reading kernel catalog %s: %w", extraPath, err)
		}
		if err := json.Unmarshal(b, &extra); err != nil {
			return nil, fmt.Errorf("reading kernel catalog %s: %w", extraPath, err)
		}
	}
	return append(extra, Catalog...), nil
}

// ErrDownload means a catalog download failed or did not match its
// checksum.
var ErrDownload = errors.New("kernel download failed")

// Download fetches e.URL into dir, verifying size and sha256 while it
// streams, and returns the file's path. progress, when set, gets the
// bytes received so far. A failed download leaves no file.
func Download(ctx context.Context, client *http.Client, e api.CatalogKernel, dir string, progress func(int64)) (path string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.URL, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v: check your network or use a mirror in the catalog file", ErrDownload, e.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%w: %s answered HTTP %d: the entry may be outdated; import the kernel from a file instead", ErrDownload, e.URL, resp.StatusCode)
	}
	f, err := os.CreateTemp(dir, "download-*"+filepath.Ext(e.URL))
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	pr := &progressReader{r: io.LimitReader(resp.Body, e.Size+1), fn: progress}
	n, err := io.Copy(io.MultiWriter(f, h), pr)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrDownload, e.URL, err)
	}
	if n != e.Size {
		return "", fmt.Errorf("%w: %s: got %d bytes, the catalog says %d", ErrDownload, e.URL, n, e.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != e.SHA256 {
		return "", fmt.Errorf("%w: %s: sha256 %s, the catalog says %s", ErrDownload, e.URL, got, e.SHA256)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return f.Name(), nil
}

type progressReader struct {
	r  io.Reader
	n  int64
	fn func(int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if p.fn != nil && n > 0 {
		p.fn(p.n)
	}
	return n, err
}

// FindInstalled returns the newest distribution kernel installed under
// root ("/" on a host): root/boot/vmlinuz-VERSION with
// root/lib/modules/VERSION.
func FindInstalled(root string) (string, error) {
	matches, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	type cand struct{ path, version string }
	var cands []cand
	for _, m := range matches {
		v := strings.TrimPrefix(filepath.Base(m), "vmlinuz-")
		if fi, err := os.Stat(filepath.Join(root, "lib", "modules", v)); err == nil && fi.IsDir() {
			cands = append(cands, cand{m, v})
		}
	}
	if len(cands) == 0 {
		return "", fmt.Errorf("%w in %s", ErrNoInstalledKernel, filepath.Join(root, "boot"))
	}
	sort.Slice(cands, func(i, j int) bool { return versionLess(cands[i].version, cands[j].version) })
	return cands[len(cands)-1].path, nil
}

// versionLess compares kernel versions number by number ("6.1.0-56" <
// "6.1.0-120").
func versionLess(a, b string) bool {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' || r == '+' || r == '_' })
	}
	pa, pb := split(a), split(b)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if pa[i] == pb[i] {
			continue
		}
		var na, nb int
		_, ea := fmt.Sscanf(pa[i], "%d", &na)
		_, eb := fmt.Sscanf(pb[i], "%d", &nb)
		if ea == nil && eb == nil && na != nb {
			return na < nb
		}
		return pa[i] < pb[i]
	}
	return len(pa) < len(pb)
}
