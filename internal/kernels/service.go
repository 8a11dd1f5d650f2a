// Package kernels is the kernel service: it owns the kernels VMs boot.
// Imports from a user's file (read as that user), pulls of catalog
// kernels from Debian's signed archive and of OCI images that carry one,
// the default kernel (the host's own, imported on first use), removal,
// and the reconcile that rebuilds initramfs images when the guest agent
// changes all go through it. The kernel package builds; this one decides
// names, where files go and what is recorded. It knows nothing of HTTP.
package kernels

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
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

// DefaultName is the name the default kernel gets when banger imports
// the host's newest installed kernel on first use.
const DefaultName = "host"

// Deps are what the service needs, given once by the daemon's wiring.
type Deps struct {
	Layout paths.Layout
	Store  *store.Store
	// Puller pulls OCI images that carry a kernel.
	Puller *imagepull.Puller
	// HTTPClient fetches catalog kernels and Debian indexes.
	HTTPClient *http.Client
	// Runner runs gpgv for the archive's signatures.
	Runner system.CommandRunner
	Log    *slog.Logger
	// Catalog is a JSON file of extra catalog entries ("": built-in only).
	Catalog string
	// AptDir is the host's apt configuration (its Debian mirror).
	AptDir string
	// HostRoot is where installed kernels are looked for ("/").
	HostRoot string
	// Removed is told of every kernel removed (the VM service drops its
	// warm templates).
	Removed func(ctx context.Context, k api.Kernel)
}

// Service owns kernels. Safe for concurrent use.
type Service struct{ d Deps }

// New returns the kernel service.
func New(d Deps) *Service {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.AptDir == "" {
		d.AptDir = "/etc/apt"
	}
	if d.HostRoot == "" {
		d.HostRoot = "/"
	}
	if d.HTTPClient == nil {
		d.HTTPClient = &http.Client{Transport: http.DefaultTransport}
	}
	return &Service{d: d}
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidateName checks a kernel name.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: kernel name %q: use lowercase letters, digits, '.', '_' and '-' (at most 63), starting with a letter or digit", api.ErrInvalid, name)
	}
	return nil
}

// Get is the kernel named name.
func (s *Service) Get(ctx context.Context, name string) (api.Kernel, error) {
	k, err := s.d.Store.Kernel(ctx, name)
	k.OwnerName = ownerName(k.Owner)
	return k, store.Hint(err, "list kernels with `banger kernel list`")
}

// List is every kernel, newest first: kernels are everyone's to use.
func (s *Service) List(ctx context.Context) ([]api.Kernel, error) {
	ks, err := s.d.Store.Kernels(ctx)
	for i := range ks {
		ks[i].OwnerName = ownerName(ks[i].Owner)
	}
	return ks, err
}

// ownerName is the user name of uid, or its number.
func ownerName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}

// Catalog is the catalog of kernels banger can pull by name.
func (s *Service) Catalog() ([]api.CatalogKernel, error) { return kernel.CatalogEntries(s.d.Catalog) }

// Remove removes the named kernel for uid (its importer's, or an
// admin's, to remove), its record first, then its files.
func (s *Service) Remove(ctx context.Context, uid int, admin bool, name string) (api.Kernel, error) {
	if k, err := s.d.Store.Kernel(ctx, name); err == nil && !admin && k.Owner != uid {
		return api.Kernel{}, fmt.Errorf("%w: kernel %q is %s's: only they or root may remove it", api.ErrForbidden, name, ownerName(k.Owner))
	}
	k, err := s.d.Store.DeleteKernel(ctx, name)
	if err != nil {
		return k, store.Hint(err, "list kernels with `banger kernel list`")
	}
	if err := os.RemoveAll(s.d.Layout.KernelDir(k.ID)); err != nil {
		s.d.Log.Warn("removing kernel files", "kernel", k.Name, "err", err)
	}
	if s.d.Removed != nil {
		s.d.Removed(ctx, k)
	}
	s.d.Log.Info("kernel removed", "kernel", k.Name)
	return k, nil
}

// Import imports the kernel file from (a vmlinux, bzImage, linux-image
// .deb or /boot/vmlinuz-VERSION with its modules) as name. bangerd runs
// as root, its callers need not: from and the modules directory found
// next to it are opened as caller, so an import reads exactly what the
// caller may.
func (s *Service) Import(ctx context.Context, caller system.Cred, name, from string) (*api.Kernel, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(from) {
		return nil, fmt.Errorf("%w: --from %q must be an absolute path", api.ErrInvalid, from)
	}
	asCaller := func(p string) (*os.File, error) { return system.OpenAs(caller, p) }
	k, err := s.importFile(ctx, caller.UID, name, from, kernel.Options{Open: asCaller}, "")
	switch {
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("%w: %v: you may not read it; copy it somewhere you can read and import that", api.ErrForbidden, err)
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	return k, err
}

// importFile builds a kernel from a file in a staging directory, moves
// it into place and records it. Nothing is left behind on failure.
func (s *Service) importFile(ctx context.Context, owner int, name, from string, o kernel.Options, source string) (_ *api.Kernel, err error) {
	if _, err := s.d.Store.Kernel(ctx, name); err == nil {
		return nil, fmt.Errorf("%w: kernel %q exists: remove it with `banger kernel rm %s` or pick another name", store.ErrExists, name, name)
	}
	agent, err := paths.GuestAgentBinary()
	if err != nil {
		return nil, err
	}
	id := store.NewID()
	staging := s.d.Layout.KernelStagingDir(id)
	if err := os.MkdirAll(staging, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(staging)
	start := time.Now()
	b, err := kernel.ImportWith(from, staging, agent, o)
	if err != nil {
		return nil, fmt.Errorf("importing %s: %w", from, err)
	}
	final := s.d.Layout.KernelDir(id)
	if err := os.Rename(staging, final); err != nil {
		return nil, fmt.Errorf("publishing kernel: %w", err)
	}
	paths.SyncDir(s.d.Layout.KernelsDir())
	if source == "" {
		source = b.Source
	}
	k := api.Kernel{ID: id, Name: name, Version: b.Version, Vmlinux: filepath.Join(final, kernel.VmlinuxFile),
		Modules: b.Modules, Source: source, AgentHash: b.AgentHash, CreatedAt: time.Now().UTC(), Owner: owner}
	if b.Initrd != "" {
		k.Initrd = filepath.Join(final, kernel.InitrdFile)
	}
	if k.Modules == nil {
		k.Modules = []string{}
	}
	if err := s.d.Store.InsertKernel(context.Background(), k); err != nil {
		os.RemoveAll(final)
		return nil, err
	}
	s.d.Log.Info("kernel imported", "kernel", name, "version", k.Version, "modules", len(k.Modules), "source", source, "duration", time.Since(start))
	return &k, nil
}

// Default is the kernel a new VM gets when none is named: the newest
// imported one, else the host's newest installed kernel (imported now,
// as "host"), else an error naming the commands that get one.
func (s *Service) Default(ctx context.Context) (*api.Kernel, error) {
	ks, err := s.d.Store.Kernels(ctx)
	if err != nil {
		return nil, err
	}
	if len(ks) > 0 {
		return &ks[0], nil
	}
	path, err := kernel.FindInstalled(s.d.HostRoot)
	if errors.Is(err, kernel.ErrNoInstalledKernel) {
		return nil, fmt.Errorf("%w: no kernel yet and none installed on this host: run `banger kernel pull debian-12-cloud`, or `banger kernel import NAME --from FILE` with a vmlinux, vmlinuz or linux-image .deb", store.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	// The host's own kernel, imported for whoever asks first, is root's.
	return s.importFile(ctx, 0, DefaultName, path, kernel.Options{}, "")
}

// Resolve is the kernel named name, or the default kernel (see Default)
// when name is empty or, for defaultName, when no such kernel exists.
func (s *Service) Resolve(ctx context.Context, name, configured string) (api.Kernel, error) {
	if name != "" {
		return s.Get(ctx, name)
	}
	if k, err := s.d.Store.Kernel(ctx, configured); err == nil {
		return k, nil
	}
	k, err := s.Default(ctx)
	if err != nil {
		return api.Kernel{}, err
	}
	return *k, nil
}

// Reconcile drops records whose files vanished, removes leftover
// directories, and rebuilds initramfs images whose packed agent is not
// the installed one (so a new banger reaches old kernels' VMs).
func (s *Service) Reconcile(ctx context.Context) error {
	ks, err := s.d.Store.Kernels(ctx)
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
			s.d.Log.Warn("kernel file missing: dropping its record; import it again", "kernel", k.Name, "vmlinux", k.Vmlinux)
			if _, err := s.d.Store.DeleteKernel(ctx, k.Name); err != nil {
				return err
			}
			continue
		}
		known[k.ID] = true
		if k.Initrd == "" || agentHash == "" || k.AgentHash == agentHash {
			continue
		}
		b := &kernel.Built{Version: k.Version}
		if err := kernel.BuildInitramfs(s.d.Layout.KernelDir(k.ID), agent, b); err != nil {
			s.d.Log.Warn("rebuilding initramfs", "kernel", k.Name, "err", err)
			continue
		}
		if err := s.d.Store.SetKernelInitrd(ctx, k.Name, b.Initrd, b.AgentHash); err != nil {
			return err
		}
		s.d.Log.Info("initramfs rebuilt for the new guest agent", "kernel", k.Name)
	}
	return paths.RemoveLeftovers(s.d.Log, s.d.Layout.KernelsDir(), known)
}

// archive reads Debian archives for catalog kernels, verifying with the
// host's Debian archive keyring and caching indexes.
func (s *Service) archive() *debarchive.Archive {
	return &debarchive.Archive{Client: s.d.HTTPClient, Runner: s.d.Runner, CacheDir: s.d.Layout.ArchiveCacheDir()}
}

// debianMirrors are the host's Debian mirrors, else deb.debian.org's:
// the ones a Debian image build uses.
func (s *Service) debianMirrors() debarchive.Mirrors {
	return imagebuild.HostMirrors(imagebuild.Distros["debian"], s.d.AptDir)
}
