package kernel

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"

	"banger/internal/api"
	"banger/internal/debarchive"
)

// Resolve turns a catalog entry that names a Debian package pattern into
// the file to download: the newest matching package of the entry's
// suite, its -updates suite and its -security suite, each read from an
// InRelease verified with gpgv. def gives the archives an entry does not
// name. An entry with a fixed URL is returned as it is. A suite that
// cannot be reached is skipped while another answers; a suite whose
// index fails verification fails the whole lookup.
func Resolve(ctx context.Context, a *debarchive.Archive, e api.CatalogKernel, def debarchive.Mirrors) (api.CatalogKernel, error) {
	if e.Package == "" {
		return e, nil
	}
	re, err := regexp.Compile(e.Package)
	if err != nil {
		return e, fmt.Errorf("catalog kernel %s: package pattern %q: %v", e.Name, e.Package, err)
	}
	archive, security := e.Archive, e.Security
	if archive == "" {
		archive = def.Archive
	}
	if security == "" {
		security = def.Security
	}
	var found []debarchive.Package
	var unreachable []string
	for _, s := range []struct{ base, suite string }{
		{archive, e.Suite}, {archive, e.Suite + "-updates"}, {security, e.Suite + "-security"},
	} {
		pkgs, err := a.Packages(ctx, s.base, s.suite, "main", "amd64", re)
		if errors.Is(err, debarchive.ErrUnreachable) {
			unreachable = append(unreachable, err.Error())
			continue
		}
		if err != nil {
			return e, fmt.Errorf("%w: catalog kernel %s: %v", ErrDownload, e.Name, err)
		}
		found = append(found, pkgs...)
	}
	best, ok := debarchive.Newest(found)
	if !ok {
		if len(unreachable) > 0 {
			return e, fmt.Errorf("%w: catalog kernel %s: %s", ErrDownload, e.Name, unreachable[0])
		}
		return e, fmt.Errorf("%w: catalog kernel %s: no package matching %s in %s: import a kernel with `banger kernel import NAME --from FILE`", ErrDownload, e.Name, e.Package, e.Suite)
	}
	e.URL, e.Size, e.SHA256, e.Version = best.URL, best.Size, best.SHA256, best.Version
	e.Description = fmt.Sprintf("%s %s from %s", best.Name, best.Version, best.Suite)
	return e, nil
}

// SourceOf is how a kernel pulled from entry is recorded: the catalog
// name and, for an archive entry, the package file (name, version), so a
// later pull can tell whether the archive moved on.
func SourceOf(e api.CatalogKernel) string {
	s := "catalog:" + e.Name
	if e.Package != "" && e.URL != "" {
		s += " (" + path.Base(e.URL) + ")"
	}
	return s
}

// CachedDownload is Download into cacheDir under the file's hash, reusing
// a cached copy that still matches it: a kernel is downloaded once, even
// when it is removed and pulled again. cached tells which happened.
func CachedDownload(ctx context.Context, client *http.Client, e api.CatalogKernel, cacheDir string, progress func(int64)) (file string, cached bool, err error) {
	if _, err := hex.DecodeString(e.SHA256); err != nil || len(e.SHA256) != 64 {
		return "", false, fmt.Errorf("%w: catalog kernel %s has no sha256", ErrDownload, e.Name)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", false, err
	}
	final := filepath.Join(cacheDir, e.SHA256+path.Ext(e.URL))
	if h, err := HashFile(final); err == nil && h == e.SHA256 {
		return final, true, nil
	}
	tmp, err := Download(ctx, client, e, cacheDir, progress)
	if err != nil {
		return "", false, err
	}
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return "", false, err
	}
	return final, false, nil
}
