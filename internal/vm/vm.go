// Package vm is the VM lifecycle end to end, and its one door: Service.
// It owns VMs (create, start by boot or by restore, stop, kill, restart,
// remove, prune, pause, resume), their snapshots, forks and warm
// templates, their mounts (virtio-fs and synced), their agent sessions
// and consoles, and the adoption of running VMs after a daemon restart.
// Every state change goes through the state machine (Next); work on one
// VM is serialised by a lock per VM, never one for all. It depends on the
// vmm interface (backends are given as Backend), the store and the
// network runtime (vmnet), and knows nothing of HTTP: the daemon, a
// Kubernetes node or an E2B endpoint are callers of the same methods.
package vm

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"banger/internal/guestinit"
	"banger/internal/system"
)

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidateName checks that a VM name is a DNS label: it becomes NAME.vm.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("VM name %q is not a DNS label: use lowercase letters, digits and '-' (at most 63), starting and ending with a letter or digit", name)
	}
	return nil
}

var (
	adjectives = []string{"brisk", "calm", "eager", "fuzzy", "jolly", "keen", "lucid", "merry", "nimble", "quiet", "rapid", "sunny", "tidy", "witty"}
	nouns      = []string{"otter", "falcon", "badger", "heron", "lynx", "marten", "puffin", "quokka", "raven", "stoat", "tapir", "wombat"}
)

// GenerateName returns a fresh readable name such as "nimble-otter-42".
func GenerateName() string {
	b := make([]byte, 3)
	rand.Read(b)
	return adjectives[int(b[0])%len(adjectives)] + "-" + nouns[int(b[1])%len(nouns)] + "-" + strconv.Itoa(int(b[2])%100)
}

// File names in a VM directory.
const DataDisk = "data.ext4"

// CreateDataDisk makes the VM's writable disk: a sparse file of size
// bytes, formatted on the host with the run spec the init stage reads.
// Lazy initialisation keeps it sparse: a new VM costs little disk.
func CreateDataDisk(ctx context.Context, runner system.CommandRunner, dir string, size int64, spec *guestinit.RunSpec, files map[string][]byte) (string, error) {
	seed, err := os.MkdirTemp(dir, ".seed-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(seed)
	if spec != nil {
		b, err := json.Marshal(spec)
		if err != nil {
			return "", err
		}
		files = maps.Clone(files)
		if files == nil {
			files = map[string][]byte{}
		}
		files[guestinit.RunSpecPath] = b
	}
	// Seed files are the VM's own (run spec, SSH host key, authorized
	// keys): readable by root only.
	for rel, b := range files {
		p := filepath.Join(seed, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return "", err
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return "", err
		}
	}
	disk := filepath.Join(dir, DataDisk)
	// The guest's writes (its SSH host key, tokens, copied repositories)
	// land here: the VM's owner and root only.
	f, err := os.OpenFile(disk, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(disk)
		return "", err
	}
	// Lazy init and no resize inode (its reserved descriptor blocks cost
	// about 4 MiB per disk) keep a new VM's disk at about 200 KiB; an
	// offline resize2fs can still grow it.
	if _, err := runner.Run(ctx, "mkfs.ext4", "-q", "-F", "-O", "^resize_inode", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-d", seed, disk); err != nil {
		os.Remove(disk)
		return "", fmt.Errorf("formatting the writable disk: %w", err)
	}
	return disk, nil
}

// Cmdline is the kernel command line of a VM: the console, fail-fast
// panics, and the init stage's parameters.
func Cmdline(hostname string, extra ...string) string {
	parts := []string{"console=ttyS0", "panic=-1", "reboot=t", "quiet", "loglevel=3",
		"banger.root=/dev/vda", "banger.data=/dev/vdb", "banger.hostname=" + hostname}
	return strings.Join(append(parts, extra...), " ")
}
