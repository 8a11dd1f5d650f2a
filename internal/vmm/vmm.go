// Package vmm is the contract between banger's VM lifecycle and the
// virtual machine monitors that run guests: Firecracker
// (vmm/firecracker) and QEMU's microvm machine (vmm/qemu). A backend
// starts a Machine from a Spec; a Machine is the handle to one running
// VMM process. What only some backends can do (pause, snapshots) are
// separate interfaces, found by type assertion, and ErrNotSupported
// otherwise. Backends never import each other; this package imports
// neither.
package vmm

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"banger/internal/consolelog"
	"banger/internal/system"
)

// ErrNotSupported means the backend cannot do what was asked.
var ErrNotSupported = errors.New("not supported by this VMM")

// ErrExited means the VMM process is gone.
var ErrExited = errors.New("VMM process exited")

// ConsoleLog is the guest's serial console in a VM directory, with its
// older half beside it (see package consolelog).
const ConsoleLog = "console.log"

// Drive is a disk attached as a virtio block device, in Spec order
// (the first is /dev/vda in the guest).
type Drive struct {
	ID       string // short identifier, [a-z0-9_]
	Path     string
	ReadOnly bool
}

// Spec is everything a backend needs to start a VM.
type Spec struct {
	// ID names the VM for the VMM (and its logs); Dir is the VM's
	// directory, where the backend keeps sockets, the console log and
	// its own logs. Both are required.
	ID, Dir   string
	VCPUs     int
	MemoryMiB int
	Kernel    string // uncompressed ELF vmlinux
	Initrd    string // optional
	Cmdline   string
	Drives    []Drive
	// TAP is the host TAP device of the VM's NIC, "" for none; MAC is
	// its guest address.
	TAP, MAC string
	// MemoryFile backs guest RAM with a shared file the host can read
	// (QEMU): a snapshot then copies it instead of streaming RAM through
	// the VMM. "" is anonymous memory, which cannot be snapshotted. A
	// restore ignores it: the guest maps its snapshot's memory file
	// copy-on-write (see Restorer).
	MemoryFile string
	// MemoryPrivate maps MemoryFile copy-on-write (MAP_PRIVATE) instead
	// of shared: the file's pages are read, shared with every other VM
	// that maps it, and a page the guest writes becomes the VMM's own;
	// the file is never written. Restores set it (QEMU only).
	MemoryPrivate bool
	// FS are virtio-fs devices, each served by a vhost-user back end
	// (virtiofsd) listening on Socket; they need MemoryFile (the back
	// end maps guest RAM). QEMU only.
	FS []FS
	// Console is where the guest's serial console goes: the writing end
	// of a pipe whose reader keeps Dir/ConsoleLog within its cap
	// (bangerd's `console-log` helper, which outlives the daemon as the
	// VMM does; see consolelog.StartHelper). The VMM gets a copy; the
	// caller closes its own once Start or Restore returned. nil: this
	// process keeps the log, at consolelog.DefaultMax, while it runs
	// (tests, tools); output after it exits is lost.
	Console *os.File
	// StartHook, when set, starts the VMM process (see
	// system.StartHook): the VM service places it in the VM's cgroup
	// and network namespace from birth. nil: the backend starts it
	// directly, in its caller's.
	StartHook system.StartHook
}

// ConsoleWriter is what a backend hands the VMM as the guest's serial
// console for spec, and what it calls once the VMM has its copy.
func ConsoleWriter(spec Spec) (*os.File, func(), error) {
	if spec.Console != nil {
		return spec.Console, func() {}, nil
	}
	w, _, err := consolelog.Pipe(filepath.Join(spec.Dir, ConsoleLog), consolelog.DefaultMax)
	if err != nil {
		return nil, nil, err
	}
	return w, func() { w.Close() }, nil
}

// Validate reports every problem of the spec at once.
func (s Spec) Validate() error {
	var errs []error
	if s.ID == "" || s.Dir == "" {
		errs = append(errs, errors.New("spec needs an ID and a directory"))
	}
	if len(s.FS) > 0 && (s.MemoryFile == "" || s.MemoryPrivate) {
		errs = append(errs, errors.New("virtio-fs devices need guest RAM in a shared file (MemoryFile, not MemoryPrivate)"))
	}
	if s.MemoryPrivate && s.MemoryFile == "" {
		errs = append(errs, errors.New("private guest memory needs a file to map (MemoryFile)"))
	}
	if s.VCPUs < 1 || s.VCPUs > 32 {
		errs = append(errs, errors.New("vcpus must be between 1 and 32"))
	}
	if s.MemoryMiB < 64 {
		errs = append(errs, errors.New("memory must be at least 64 MiB"))
	}
	if s.Kernel == "" {
		errs = append(errs, errors.New("spec needs a kernel"))
	}
	for _, d := range s.Drives {
		if d.ID == "" || d.Path == "" {
			errs = append(errs, errors.New("every drive needs an ID and a path"))
		}
	}
	return errors.Join(errs...)
}

// Features says what a backend supports beyond the Machine interface.
type Features struct {
	Pause     bool
	Snapshots bool
	// AgentOverVsock: the agent channel is vsock (else virtio-serial).
	AgentOverVsock bool
}

// Machine is one running VMM process. Methods are safe for concurrent
// use. The process outlives the context that started it and the daemon
// that holds the handle.
type Machine interface {
	// PID is the VMM process id.
	PID() int
	// ConsolePath is the file the guest's serial console is written to.
	ConsolePath() string
	// Stop asks the guest to shut down, waits up to ctx's deadline for the
	// VMM to exit, then kills it.
	Stop(ctx context.Context) error
	// Kill ends the VMM at once.
	Kill() error
	// Wait blocks until the VMM exits or ctx ends. Any number of callers
	// may wait.
	Wait(ctx context.Context) error
	// DialAgent opens a byte stream to the guest agent.
	DialAgent(ctx context.Context, port uint32) (net.Conn, error)
}

// Pauser is a Machine whose guest can be frozen and thawed.
type Pauser interface {
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
}

// Snapshotter is a Machine that can write its state (paused) to files a
// new VMM can start from.
type Snapshotter interface {
	CreateSnapshot(ctx context.Context, statePath, memPath string) error
}

// Snapshot names the files of a snapshot a backend restores from:
// device state and guest memory, as CreateSnapshot wrote them.
type Snapshot struct {
	State, Memory string
}

// Restorer is a backend that starts a VM from a Snapshot instead of
// booting it. The spec is the new VM's (its own directory, drives, TAP
// and MAC); its drives must match the snapshotted VM's in order and
// kind. The restored guest runs when Restore returns; it still believes
// it is the VM it was snapshotted from until the caller tells it
// otherwise.
//
// The guest's memory maps the snapshot's memory file copy-on-write
// (MAP_PRIVATE): pages it only reads stay the file's, in the page cache
// once for every VM restored from it; a page it writes becomes its
// VMM's own. The file is never written, and must not change or shrink
// while a VM maps it (a page cut off by a truncate is a SIGBUS in that
// VMM). Unlinking it is safe: the kernel keeps the file until the last
// VMM that maps it exits.
type Restorer interface {
	Restore(ctx context.Context, spec Spec, snap Snapshot) (Machine, error)
}

var versionRE = regexp.MustCompile(`^v?[0-9]+\.[0-9]+(\.[0-9]+)?$`)

// ParseVersion finds the version in a VMM's `--version` output: "7.2.19"
// in "QEMU emulator version 7.2.19 (Debian …)", "v1.14.2" in
// "Firecracker v1.14.2". A snapshot records it: device state is read
// back only by the version that wrote it.
func ParseVersion(out string) string {
	first, _, _ := strings.Cut(out, "\n")
	for _, f := range strings.Fields(first) {
		if versionRE.MatchString(f) {
			return f
		}
	}
	return ""
}

// FS is a virtio-fs device: the guest mounts Tag.
type FS struct {
	Tag, Socket string
}
