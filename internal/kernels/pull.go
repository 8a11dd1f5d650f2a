package kernels

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/imagepull"
	"banger/internal/kernel"
	"banger/internal/store"
)

// PullRun does a pull that Pull checked and planned: it sends progress
// to emit and returns the kernel, with a message when there was nothing
// to do ("kernel is up to date").
type PullRun func(ctx context.Context, emit func(api.Event)) (*api.Kernel, string, error)

// Pull plans the pull of req.Name: a catalog name (the newest package
// of it in Debian's signed index, downloaded once) or an OCI reference to
// an image that carries /boot/vmlinux (and, optionally, lib/modules).
// What can be refused is refused here, before any progress; the run
// does the work.
// The kernel is owner's.
func (s *Service) Pull(ctx context.Context, owner int, req api.KernelPullRequest) (PullRun, error) {
	entry, catalogErr := kernel.CatalogEntry(req.Name, s.d.Catalog)
	isRef := catalogErr != nil && strings.ContainsAny(req.Name, "/:")
	if catalogErr != nil && !isRef {
		return nil, fmt.Errorf("%w: %v (or give an OCI image reference with /boot/vmlinux in it)", store.ErrNotFound, catalogErr)
	}
	name := req.As
	if name == "" {
		name = req.Name
		if isRef {
			name = nameFromRef(req.Name)
		}
	}
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	existing, err := s.d.Store.Kernel(ctx, name)
	exists := err == nil
	if exists && (isRef || entry.Package == "") {
		return nil, fmt.Errorf("%w: kernel %q exists: remove it with `banger kernel rm %s` or pull with --as NAME", store.ErrExists, name, name)
	}
	if !isRef {
		// An archive entry is looked up before anything else: the
		// newest package decides whether an existing kernel is current.
		if entry, err = kernel.Resolve(ctx, s.archive(), entry, s.debianMirrors()); err != nil {
			return nil, err
		}
		if exists {
			if existing.Source != kernel.SourceOf(entry) {
				return nil, fmt.Errorf("%w: kernel %q is %s, but the archive now has %s: remove it with `banger kernel rm %s` and pull again, or pull with --as NAME",
					store.ErrExists, name, strings.TrimPrefix(existing.Source, "catalog:"+entry.Name+" "), entry.Description, name)
			}
			return func(context.Context, func(api.Event)) (*api.Kernel, string, error) {
				return &existing, "kernel is up to date (" + entry.Description + ")", nil
			}, nil
		}
	}
	return func(ctx context.Context, emit func(api.Event)) (_ *api.Kernel, _ string, err error) {
		tmp, err := os.MkdirTemp(s.d.Layout.KernelsDir(), ".download-")
		if err != nil {
			return nil, "", err
		}
		var k *api.Kernel
		if isRef {
			k, err = s.pullOCI(ctx, owner, req.Name, name, tmp, emit)
		} else {
			k, err = s.pullCatalog(ctx, owner, entry, name, emit)
		}
		// Clean up before the final event: when the client hears the
		// pull ended, nothing of it is left.
		if rerr := os.RemoveAll(tmp); rerr != nil && err == nil {
			err = rerr
		}
		return k, "", err
	}, nil
}

func (s *Service) pullCatalog(ctx context.Context, owner int, entry api.CatalogKernel, name string, emit func(api.Event)) (*api.Kernel, error) {
	last := time.Time{}
	emit(api.Event{Type: api.EventProgress, Stage: "resolve", Message: entry.Description})
	file, cached, err := kernel.CachedDownload(ctx, s.d.HTTPClient, entry, s.d.Layout.KernelCacheDir(), func(n int64) {
		if time.Since(last) > 100*time.Millisecond || n == entry.Size {
			last = time.Now()
			emit(api.Event{Type: api.EventProgress, Stage: "download", Current: n, Total: entry.Size})
		}
	})
	if err != nil {
		return nil, err
	}
	if cached {
		emit(api.Event{Type: api.EventProgress, Stage: "download", Current: entry.Size, Total: entry.Size, Cached: true})
	}
	emit(api.Event{Type: api.EventProgress, Stage: "import", Message: entry.Name})
	return s.importFile(ctx, owner, name, file, kernel.Options{}, kernel.SourceOf(entry))
}

// pullOCI pulls an image and imports the kernel it carries:
// boot/vmlinux (or boot/vmlinuz*), with lib/modules/VERSION when present.
func (s *Service) pullOCI(ctx context.Context, owner int, ref, name, tmp string, emit func(api.Event)) (*api.Kernel, error) {
	match := func(p string) bool {
		return strings.HasPrefix(p, "boot/vmlinu") || strings.HasPrefix(p, "lib/modules/") || strings.HasPrefix(p, "usr/lib/modules/")
	}
	files, err := s.d.Puller.ExtractFiles(ctx, imagepull.Request{Ref: ref, Dir: tmp, Progress: func(p imagepull.Progress) {
		if p.Stage == imagepull.StageDownload || p.Stage == imagepull.StageResolve {
			emit(api.Event{Type: api.EventProgress, Stage: p.Stage, Layer: p.Layer, Layers: p.Layers, Current: p.Current, Total: p.Total, Cached: p.Cached})
		}
	}}, filepath.Join(tmp, "root"), match)
	if err != nil {
		return nil, err
	}
	var vmlinux string
	for _, f := range files {
		if f == "boot/vmlinux" || (vmlinux == "" && strings.HasPrefix(f, "boot/vmlinu")) {
			vmlinux = f
		}
	}
	if vmlinux == "" {
		return nil, fmt.Errorf("%w: image %s has no /boot/vmlinux or /boot/vmlinuz*: it is not a kernel image", kernel.ErrNotKernel, ref)
	}
	modules := ""
	for _, base := range []string{"lib/modules", "usr/lib/modules"} {
		vers, _ := os.ReadDir(filepath.Join(tmp, "root", base))
		if len(vers) == 1 && vers[0].IsDir() {
			modules = filepath.Join(tmp, "root", base, vers[0].Name())
		}
	}
	emit(api.Event{Type: api.EventProgress, Stage: "import", Message: ref})
	return s.importFile(ctx, owner, name, filepath.Join(tmp, "root", vmlinux), kernel.Options{Modules: modules}, "oci:"+ref)
}

var notNameChars = regexp.MustCompile(`[^a-z0-9._-]`)

// nameFromRef makes a kernel name from an image reference:
// "ghcr.io/acme/vmlinux:6.1" becomes "vmlinux-6.1".
func nameFromRef(ref string) string {
	if i := strings.LastIndex(ref, "/"); i >= 0 {
		ref = ref[i+1:]
	}
	ref, _, _ = strings.Cut(ref, "@")
	ref = strings.ToLower(strings.ReplaceAll(ref, ":", "-"))
	ref = notNameChars.ReplaceAllString(ref, "-")
	ref = strings.TrimLeft(ref, "-._")
	if len(ref) > 63 {
		ref = ref[:63]
	}
	return ref
}
