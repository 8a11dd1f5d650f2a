// Package paths owns banger's file-system layout: where state, caches,
// sockets, logs and companion binaries live. Build one Layout from
// --home/BANGER_HOME at start-up and pass it down; nothing else in banger
// reads those environment variables or spells these paths.
package paths

import (
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
)

// Environment variables read by FromEnv and the CLI.
const (
	EnvHome        = "BANGER_HOME"
	EnvHost        = "BANGER_HOST"
	EnvNoAutostart = "BANGER_NO_AUTOSTART"
	EnvAgentBin    = "BANGER_AGENT_BIN"
)

// System-wide locations used when no home directory is given.
const (
	SystemStateDir  = "/var/lib/banger"
	SystemCacheDir  = "/var/cache/banger"
	SystemRunDir    = "/run/banger"
	SystemConfigDir = "/etc/banger"
)

// Layout is the set of directories of one banger instance.
type Layout struct {
	// Home is the instance root when one was given, else empty.
	Home     string
	StateDir string // SQLite database, images, kernels, VM directories, daemon log
	CacheDir string // OCI layer blobs, shared between images
	RunDir   string // the API socket and other runtime files
	// ConfigFile is where config.toml is read from.
	ConfigFile string
}

// New returns the layout rooted at home, or the system-wide layout when
// home is empty. A relative home is made absolute.
func New(home string) (Layout, error) {
	if home == "" {
		return Layout{
			StateDir:   SystemStateDir,
			CacheDir:   SystemCacheDir,
			RunDir:     SystemRunDir,
			ConfigFile: filepath.Join(SystemConfigDir, "config.toml"),
		}, nil
	}
	abs, err := filepath.Abs(home)
	if err != nil {
		return Layout{}, fmt.Errorf("resolving home %q: %w", home, err)
	}
	return Layout{
		Home:       abs,
		StateDir:   filepath.Join(abs, "state"),
		CacheDir:   filepath.Join(abs, "cache"),
		RunDir:     filepath.Join(abs, "run"),
		ConfigFile: filepath.Join(abs, "config.toml"),
	}, nil
}

// FromEnv returns New(flagHome), falling back to $BANGER_HOME when the
// flag is empty.
func FromEnv(flagHome string) (Layout, error) {
	if flagHome == "" {
		flagHome = os.Getenv(EnvHome)
	}
	return New(flagHome)
}

// Socket is the daemon's API socket.
func (l Layout) Socket() string { return filepath.Join(l.RunDir, "bangerd.sock") }

// Database is the SQLite store.
func (l Layout) Database() string { return filepath.Join(l.StateDir, "banger.db") }

// DaemonLog is the daemon's structured log file.
func (l Layout) DaemonLog() string { return filepath.Join(l.StateDir, "bangerd.log") }

// ImagesDir holds one directory per published image.
func (l Layout) ImagesDir() string { return filepath.Join(l.StateDir, "images") }

// ImageDir is the directory of the image with the given id.
func (l Layout) ImageDir(id string) string { return filepath.Join(l.ImagesDir(), id) }

// StagingDir is where an image with the given id is built before it is
// renamed into ImageDir. It lives in the same file system so the rename is
// atomic, and its name starts with a dot so listings and reconcile can tell
// it from a published image.
func (l Layout) StagingDir(id string) string {
	return filepath.Join(l.ImagesDir(), ".staging-"+id)
}

// KernelsDir holds one directory per imported kernel.
func (l Layout) KernelsDir() string { return filepath.Join(l.StateDir, "kernels") }

// KernelDir is the directory of the kernel with the given id.
func (l Layout) KernelDir(id string) string { return filepath.Join(l.KernelsDir(), id) }

// KernelStagingDir is where a kernel is built before it is renamed into
// KernelDir.
func (l Layout) KernelStagingDir(id string) string {
	return filepath.Join(l.KernelsDir(), ".staging-"+id)
}

// VMsDir holds one directory per VM: its writable disk, console log and
// the VMM's sockets and logs.
func (l Layout) VMsDir() string { return filepath.Join(l.StateDir, "vms") }

// VMDir is the directory of the VM with the given id.
func (l Layout) VMDir(id string) string { return filepath.Join(l.VMsDir(), id) }

// BlobsDir holds compressed OCI layer blobs by digest.
func (l Layout) BlobsDir() string { return filepath.Join(l.CacheDir, "blobs") }

// KernelCacheDir holds downloaded kernel packages by sha256, so a kernel
// removed and pulled again is not downloaded again.
func (l Layout) KernelCacheDir() string { return filepath.Join(l.CacheDir, "kernels") }

// ArchiveCacheDir holds Debian package indexes by sha256.
func (l Layout) ArchiveCacheDir() string { return filepath.Join(l.CacheDir, "debian-index") }

// SnapshotsDir holds one directory per snapshot and warm template.
func (l Layout) SnapshotsDir() string { return filepath.Join(l.StateDir, "snapshots") }

// SnapshotDir is the directory of the snapshot with the given id.
func (l Layout) SnapshotDir(id string) string { return filepath.Join(l.SnapshotsDir(), id) }

// shmDir is where guest RAM files go when the host has a /dev/shm.
var shmDir = "/dev/shm"

// RAMDir holds the guest RAM files of running QEMU VMs. They live in
// memory (tmpfs), not on the state disk: a guest's RAM written back to
// disk would cost I/O for nothing. One directory per instance, named
// after its state directory, so instances never share one.
func (l Layout) RAMDir() string {
	if fi, err := os.Stat(shmDir); err == nil && fi.IsDir() {
		return filepath.Join(shmDir, l.instanceName())
	}
	return filepath.Join(l.RunDir, "ram")
}

// CgroupParent is the cgroup the instance's VM groups go under, at the
// top of each hierarchy: named after the state directory as RAMDir is,
// so that two instances on one host (tests run many) never share one,
// and an instance finds its own again after a restart.
func (l Layout) CgroupParent() string { return l.instanceName() }

// instanceName is "banger-" and a hash of the state directory: a name
// of this instance among others on the host.
func (l Layout) instanceName() string {
	h := fnv.New32a()
	h.Write([]byte(l.StateDir))
	return fmt.Sprintf("banger-%08x", h.Sum32())
}

// RAMFile is the guest RAM file of the VM with the given id.
func (l Layout) RAMFile(id string) string { return filepath.Join(l.RAMDir(), id+".ram") }

// MkdirAll creates the instance's directories.
func (l Layout) MkdirAll() error {
	for _, d := range []string{l.StateDir, l.ImagesDir(), l.KernelsDir(), l.VMsDir(), l.SnapshotsDir(), l.BlobsDir(), l.RunDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	return nil
}

// ErrCompanionNotFound means a binary that ships with banger is missing.
var ErrCompanionNotFound = errors.New("companion binary not found")

// CompanionBinaryPath finds a binary that ships with banger (bangerd,
// banger-vsock-agent). It looks next to the running executable first, then
// in the library directories an installation uses. For the guest agent,
// $BANGER_AGENT_BIN overrides the search.
func CompanionBinaryPath(name string) (string, error) {
	if name == "banger-vsock-agent" {
		if p := os.Getenv(EnvAgentBin); p != "" {
			return p, nil
		}
	}
	var candidates []string
	if exe, err := os.Executable(); err == nil {
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		candidates = append(candidates, filepath.Join(filepath.Dir(exe), name))
	}
	candidates = append(candidates,
		filepath.Join("/usr/local/lib/banger", name),
		filepath.Join("/usr/lib/banger", name),
	)
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			return c, nil
		}
	}
	return "", fmt.Errorf("%w: %s (looked in %v); rebuild with `make install`", ErrCompanionNotFound, name, candidates)
}
