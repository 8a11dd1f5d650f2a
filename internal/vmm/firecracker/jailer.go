package firecracker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
)

// Jailer runs Firecracker under Firecracker's jailer: in a chroot of its
// own, as an unprivileged user, optionally in cgroups. The VM's kernel,
// initrd and drives are hard-linked into the chroot (no copies), as are
// its log files; sockets live in the chroot under short names.
type Jailer struct {
	Bin string // the jailer binary
	// ChrootBase holds the jails (BASE/firecracker/ID/root). It must be
	// on the same filesystem as images, kernels and VM directories:
	// files are hard-linked in.
	ChrootBase string
	UID, GID   int
	// Cgroups are FILE=VALUE settings (cpu.shares=512), in cgroup
	// version CgroupVersion (1 or 2; default 1).
	Cgroups       []string
	CgroupVersion int
}

// WithJailer makes the backend start Firecracker under j.
func (b *Backend) WithJailer(j Jailer) (*Backend, error) {
	if _, err := os.Stat(j.Bin); err != nil {
		return nil, fmt.Errorf("jailer binary %s: %w: install Firecracker's jailer next to firecracker, or drop the jailer from the config", j.Bin, err)
	}
	if j.UID <= 0 || j.GID <= 0 {
		return nil, errors.New("the jailer needs an unprivileged uid and gid (not root)")
	}
	if err := os.MkdirAll(j.ChrootBase, 0o755); err != nil {
		return nil, err
	}
	c := *b
	c.jailer = &j
	return &c, nil
}

var jailIDRE = regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`)

// jailID is the jail of the VM in dir: its directory's name (the VM id).
func jailID(dir string) (string, error) {
	id := filepath.Base(dir)
	if !jailIDRE.MatchString(id) {
		return "", fmt.Errorf("VM directory %s: its name is not a valid jail id", dir)
	}
	return id, nil
}

// jailDir is the directory the jailer makes for the VM in dir; its
// "root" is Firecracker's /.
func (b *Backend) jailDir(dir string) string {
	return filepath.Join(b.jailer.ChrootBase, filepath.Base(b.bin), filepath.Base(dir))
}

// jailArgs is the jailer's command line for the VM in dir.
func (b *Backend) jailArgs(id string) []string {
	j := b.jailer
	args := []string{"--id", id, "--exec-file", b.bin, "--uid", fmt.Sprint(j.UID), "--gid", fmt.Sprint(j.GID),
		"--chroot-base-dir", j.ChrootBase}
	if j.CgroupVersion != 0 {
		args = append(args, "--cgroup-version", fmt.Sprint(j.CgroupVersion))
	}
	for _, c := range j.Cgroups {
		args = append(args, "--cgroup", c)
	}
	return append(args, "--", "--api-sock", "/"+APISocket)
}

// place makes hostPath visible to Firecracker and returns the path it
// should be given: the path itself without a jailer; with one, a hard
// link in the chroot (owned by the jail's user when Firecracker must
// write it).
func (m *Machine) place(hostPath, name string, writable bool) (string, error) {
	if m.root == "" {
		return hostPath, nil
	}
	link := filepath.Join(m.root, name)
	os.Remove(link)
	if err := os.Link(hostPath, link); err != nil {
		if errors.Is(err, syscall.EXDEV) {
			return "", fmt.Errorf("the jailer's chroot base %s and %s are on different filesystems: files are hard-linked into jails, so keep the jails under banger's state directory", m.jail.ChrootBase, hostPath)
		}
		return "", fmt.Errorf("linking %s into the jail: %w", hostPath, err)
	}
	if writable {
		if err := os.Chown(hostPath, m.jail.UID, m.jail.GID); err != nil {
			return "", err
		}
	}
	return "/" + name, nil
}

// removeJail deletes what the jailer made for the VM in dir once its
// Firecracker is gone: the jail (links, the jailer's copy of
// firecracker, sockets) and its cgroups, v1 and v2.
func (b *Backend) removeJail(dir string) {
	os.RemoveAll(b.jailDir(dir))
	cgs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", filepath.Base(b.bin), filepath.Base(dir)))
	cgs = append(cgs, filepath.Join("/sys/fs/cgroup", filepath.Base(b.bin), filepath.Base(dir)))
	for _, cg := range cgs {
		os.Remove(cg) // rmdir: a cgroup is removed as an empty directory
	}
}
