package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/debarchive"
	"banger/internal/imagebuild"
	"banger/internal/imagepull"
	"banger/internal/kernel"
	"banger/internal/paths"
	"banger/internal/store"
	"banger/internal/system"
)

var kernelNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// DefaultKernelName is the name the default kernel gets when banger
// imports the host's newest installed kernel on first use.
const DefaultKernelName = "host"

func validateKernelName(name string) error {
	if !kernelNameRE.MatchString(name) {
		return fmt.Errorf("%w: kernel name %q: use lowercase letters, digits, '.', '_' and '-' (at most 63), starting with a letter or digit", errInvalid, name)
	}
	return nil
}

func (d *Daemon) handleRemoveKernel(w http.ResponseWriter, r *http.Request) error {
	k, err := d.store.DeleteKernel(r.Context(), r.PathValue("name"))
	if err != nil {
		return withHint(err, "list kernels with `banger kernel list`")
	}
	if err := os.RemoveAll(d.layout.KernelDir(k.ID)); err != nil {
		d.log.Warn("removing kernel files", "kernel", k.Name, "err", err)
	}
	d.dropTemplates(r.Context(), "its kernel was removed", func(sn api.Snapshot) bool { return sn.KernelID == k.ID })
	d.log.Info("kernel removed", "kernel", k.Name)
	writeJSON(w, http.StatusOK, k)
	return nil
}

func (d *Daemon) handleKernelCatalog(w http.ResponseWriter, r *http.Request) error {
	entries, err := kernel.CatalogEntries(d.opts.KernelCatalog)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, entries)
	return nil
}

func (d *Daemon) handleKernelImport(w http.ResponseWriter, r *http.Request) error {
	var req api.KernelImportRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if err := validateKernelName(req.Name); err != nil {
		return err
	}
	if !filepath.IsAbs(req.From) {
		return fmt.Errorf("%w: --from %q must be an absolute path", errInvalid, req.From)
	}
	// bangerd runs as root, its callers need not: the kernel file and
	// the modules directory found next to it are opened as the caller,
	// so an import reads exactly what the caller may.
	c := callerOf(r.Context())
	asCaller := func(p string) (*os.File, error) {
		return system.OpenAs(system.Cred{UID: c.UID, GID: c.GID, Groups: c.Groups}, p)
	}
	k, err := d.importKernel(r.Context(), req.Name, req.From, kernel.Options{Open: asCaller}, "")
	switch {
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: %v: you may not read it; copy it somewhere you can read and import that", errForbidden, err)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %v", errInvalid, err)
	case err != nil:
		return err
	}
	writeJSON(w, http.StatusCreated, k)
	return nil
}

// importKernel builds a kernel from a file in a staging directory, moves
// it into place and records it. Nothing is left behind on failure.
func (d *Daemon) importKernel(ctx context.Context, name, from string, o kernel.Options, source string) (_ *api.Kernel, err error) {
	if _, err := d.store.Kernel(ctx, name); err == nil {
		return nil, fmt.Errorf("%w: kernel %q exists: remove it with `banger kernel rm %s` or pick another name", store.ErrExists, name, name)
	}
	agent, err := paths.GuestAgentBinary()
	if err != nil {
		return nil, err
	}
	id := newID()
	staging := d.layout.KernelStagingDir(id)
	if err := os.MkdirAll(staging, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(staging)
	start := time.Now()
	b, err := kernel.ImportWith(from, staging, agent, o)
	if err != nil {
		return nil, fmt.Errorf("importing %s: %w", from, err)
	}
	final := d.layout.KernelDir(id)
	if err := os.Rename(staging, final); err != nil {
		return nil, fmt.Errorf("publishing kernel: %w", err)
	}
	syncDir(d.layout.KernelsDir())
	if source == "" {
		source = b.Source
	}
	k := api.Kernel{ID: id, Name: name, Version: b.Version, Vmlinux: filepath.Join(final, kernel.VmlinuxFile),
		Modules: b.Modules, Source: source, AgentHash: b.AgentHash, CreatedAt: time.Now().UTC()}
	if b.Initrd != "" {
		k.Initrd = filepath.Join(final, kernel.InitrdFile)
	}
	if k.Modules == nil {
		k.Modules = []string{}
	}
	if err := d.store.InsertKernel(context.Background(), k); err != nil {
		os.RemoveAll(final)
		return nil, err
	}
	d.log.Info("kernel imported", "kernel", name, "version", k.Version, "modules", len(k.Modules), "source", source, "duration", time.Since(start))
	return &k, nil
}

func (d *Daemon) handleKernelPull(w http.ResponseWriter, r *http.Request) error {
	var req api.KernelPullRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	entry, catalogErr := kernel.CatalogEntry(req.Name, d.opts.KernelCatalog)
	// Not a catalog name: an OCI reference to an image that carries
	// /boot/vmlinux (and, optionally, lib/modules).
	isRef := catalogErr != nil && strings.ContainsAny(req.Name, "/:")
	if catalogErr != nil && !isRef {
		return fmt.Errorf("%w: %v (or give an OCI image reference with /boot/vmlinux in it)", store.ErrNotFound, catalogErr)
	}
	name := req.As
	if name == "" {
		name = req.Name
		if isRef {
			name = kernelNameFromRef(req.Name)
		}
	}
	if err := validateKernelName(name); err != nil {
		return err
	}
	existing, err := d.store.Kernel(r.Context(), name)
	exists := err == nil
	if exists && (isRef || entry.Package == "") {
		return fmt.Errorf("%w: kernel %q exists: remove it with `banger kernel rm %s` or pull with --as NAME", store.ErrExists, name, name)
	}
	if !isRef {
		// An archive entry is looked up before anything else: the
		// newest package decides whether an existing kernel is current.
		if entry, err = kernel.Resolve(r.Context(), d.archive(), entry, d.debianMirrors()); err != nil {
			return err
		}
		if exists {
			if existing.Source != kernel.SourceOf(entry) {
				return fmt.Errorf("%w: kernel %q is %s, but the archive now has %s: remove it with `banger kernel rm %s` and pull again, or pull with --as NAME",
					store.ErrExists, name, strings.TrimPrefix(existing.Source, "catalog:"+entry.Name+" "), entry.Description, name)
			}
			ew := newEventWriter(w)
			ew.emit(api.Event{Type: api.EventResult, Message: "kernel is up to date (" + entry.Description + ")", Kernel: &existing})
			return nil
		}
	}
	tmp, err := os.MkdirTemp(d.layout.KernelsDir(), ".download-")
	if err != nil {
		return err
	}
	ew := newEventWriter(w)
	var k *api.Kernel
	if isRef {
		k, err = d.pullOCIKernel(r.Context(), req.Name, name, tmp, ew)
	} else {
		k, err = d.pullCatalogKernel(r.Context(), entry, name, tmp, ew)
	}
	// Clean up before the final event: when the client hears the pull
	// ended, nothing of it is left.
	if rerr := os.RemoveAll(tmp); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		ew.emit(api.Event{Type: api.EventError, Error: apiError(err)})
		return nil
	}
	ew.emit(api.Event{Type: api.EventResult, Kernel: k})
	return nil
}

func (d *Daemon) pullCatalogKernel(ctx context.Context, entry api.CatalogKernel, name, tmp string, ew *eventWriter) (*api.Kernel, error) {
	last := time.Time{}
	ew.emit(api.Event{Type: api.EventProgress, Stage: "resolve", Message: entry.Description})
	file, cached, err := kernel.CachedDownload(ctx, d.httpClient, entry, d.layout.KernelCacheDir(), func(n int64) {
		if time.Since(last) > 100*time.Millisecond || n == entry.Size {
			last = time.Now()
			ew.emit(api.Event{Type: api.EventProgress, Stage: "download", Current: n, Total: entry.Size})
		}
	})
	if err != nil {
		return nil, err
	}
	if cached {
		ew.emit(api.Event{Type: api.EventProgress, Stage: "download", Current: entry.Size, Total: entry.Size, Cached: true})
	}
	ew.emit(api.Event{Type: api.EventProgress, Stage: "import", Message: entry.Name})
	return d.importKernel(ctx, name, file, kernel.Options{}, kernel.SourceOf(entry))
}

// archive reads Debian archives for catalog kernels, verifying with the
// host's Debian archive keyring and caching indexes.
func (d *Daemon) archive() *debarchive.Archive {
	return &debarchive.Archive{Client: d.httpClient, Runner: d.opts.Runner, CacheDir: d.layout.ArchiveCacheDir()}
}

// debianMirrors are the host's Debian mirrors, else deb.debian.org's:
// the ones a Debian image build uses.
func (d *Daemon) debianMirrors() debarchive.Mirrors {
	return imagebuild.HostMirrors(imagebuild.Distros["debian"], d.aptDir())
}

// pullOCIKernel pulls an image and imports the kernel it carries:
// boot/vmlinux (or boot/vmlinuz*), with lib/modules/VERSION when present.
func (d *Daemon) pullOCIKernel(ctx context.Context, ref, name, tmp string, ew *eventWriter) (*api.Kernel, error) {
	match := func(p string) bool {
		return strings.HasPrefix(p, "boot/vmlinu") || strings.HasPrefix(p, "lib/modules/") || strings.HasPrefix(p, "usr/lib/modules/")
	}
	files, err := d.puller.ExtractFiles(ctx, imagepull.Request{Ref: ref, Dir: tmp, Progress: func(p imagepull.Progress) {
		if p.Stage == imagepull.StageDownload || p.Stage == imagepull.StageResolve {
			ew.emit(api.Event{Type: api.EventProgress, Stage: p.Stage, Layer: p.Layer, Layers: p.Layers, Current: p.Current, Total: p.Total, Cached: p.Cached})
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
	ew.emit(api.Event{Type: api.EventProgress, Stage: "import", Message: ref})
	return d.importKernel(ctx, name, filepath.Join(tmp, "root", vmlinux), kernel.Options{Modules: modules}, "oci:"+ref)
}

// kernelNameFromRef makes a kernel name from an image reference:
// "ghcr.io/acme/vmlinux:6.1" becomes "vmlinux-6.1".
func kernelNameFromRef(ref string) string {
	if i := strings.LastIndex(ref, "/"); i >= 0 {
		ref = ref[i+1:]
	}
	ref, _, _ = strings.Cut(ref, "@")
	ref = strings.ToLower(strings.ReplaceAll(ref, ":", "-"))
	ref = regexp.MustCompile(`[^a-z0-9._-]`).ReplaceAllString(ref, "-")
	ref = strings.TrimLeft(ref, "-._")
	if len(ref) > 63 {
		ref = ref[:63]
	}
	return ref
}

// handleDefaultKernel answers which kernel a new VM gets: the newest
// imported one, else the host's newest installed kernel (imported now, as
// "host"), else an error naming the commands that get one.
func (d *Daemon) handleDefaultKernel(w http.ResponseWriter, r *http.Request) error {
	k, err := d.defaultKernel(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, k)
	return nil
}

func (d *Daemon) defaultKernel(ctx context.Context) (*api.Kernel, error) {
	ks, err := d.store.Kernels(ctx)
	if err != nil {
		return nil, err
	}
	if len(ks) > 0 {
		return &ks[0], nil
	}
	root := d.opts.HostRoot
	if root == "" {
		root = "/"
	}
	path, err := kernel.FindInstalled(root)
	if errors.Is(err, kernel.ErrNoInstalledKernel) {
		return nil, fmt.Errorf("%w: no kernel yet and none installed on this host: run `banger kernel pull debian-12-cloud`, or `banger kernel import NAME --from FILE` with a vmlinux, vmlinuz or linux-image .deb", store.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return d.importKernel(ctx, DefaultKernelName, path, kernel.Options{}, "")
}

// reconcileKernels drops records whose files vanished, removes leftover
// directories, and rebuilds initramfs images whose packed agent is not
// the installed one (so a new banger reaches old kernels' VMs).
func (d *Daemon) reconcileKernels(ctx context.Context) error {
	ks, err := d.store.Kernels(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	agent, agentErr := paths.GuestAgentBinary()
	var agentHash string
	if agentErr == nil {
		agentHash, _ = kernel.HashFile(agent)
	}
	for _, k := range ks {
		if _, err := os.Stat(k.Vmlinux); errors.Is(err, os.ErrNotExist) {
			d.log.Warn("kernel file missing: dropping its record; import it again", "kernel", k.Name, "vmlinux", k.Vmlinux)
			if _, err := d.store.DeleteKernel(ctx, k.Name); err != nil {
				return err
			}
			continue
		}
		known[k.ID] = true
		if k.Initrd == "" || agentHash == "" || k.AgentHash == agentHash {
			continue
		}
		b := &kernel.Built{Version: k.Version}
		if err := kernel.BuildInitramfs(d.layout.KernelDir(k.ID), agent, b); err != nil {
			d.log.Warn("rebuilding initramfs", "kernel", k.Name, "err", err)
			continue
		}
		if err := d.store.SetKernelInitrd(ctx, k.Name, b.Initrd, b.AgentHash); err != nil {
			return err
		}
		d.log.Info("initramfs rebuilt for the new guest agent", "kernel", k.Name)
	}
	return removeLeftovers(d, d.layout.KernelsDir(), known)
}
