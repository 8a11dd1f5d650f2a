// Package virtiofs shares host directories with QEMU VMs live: the -v
// HOST:GUEST[:ro][,sync] syntax and its checks (which synced mounts
// share), and one virtiofsd per mount,
// run with the calling user's rights.
//
// Each virtiofsd runs in a mount namespace of its own. A read-only
// mount is a read-only bind mount of the directory in that namespace,
// so "ro" holds on the host side whatever the guest does (Debian's C
// virtiofsd has no read-only option), and nothing is left mounted on
// the host when it ends. For a caller other than root it also runs in a
// user namespace whose root is the caller: it reaches exactly the files
// the caller may, files the guest creates belong to the caller, and
// files of other users show as nobody. virtiofsd's own sandbox
// (pivot_root into the shared directory) means a symlink in the tree
// pointing outside it is never followed on the host.
package virtiofs

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"banger/internal/api"
	"banger/internal/system"
)

// ErrBadMount is a -v value that cannot be honoured.
var ErrBadMount = errors.New("bad mount")

// Binary is where Debian's QEMU puts virtiofsd.
const Binary = "/usr/lib/qemu/virtiofsd"

// Find returns the virtiofsd to run: Debian's, else one on PATH.
func Find() (string, error) {
	if fi, err := os.Stat(Binary); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
		return Binary, nil
	}
	if p, err := system.LookPath("virtiofsd"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("no virtiofsd (looked at %s and on PATH): apt-get install qemu-system-x86, which ships it", Binary)
}

// Spec is one -v value as given.
type Spec struct {
	Host, Guest string
	ReadOnly    bool
	// Sync asks for a synced copy (what Firecracker VMs always get)
	// instead of a live share.
	Sync bool
}

// Parse reads one -v value, HOST:GUEST[:OPTIONS], HOST absolute, the
// options comma-separated: ro or rw, and sync.
func Parse(spec string) (Spec, error) {
	f := strings.Split(spec, ":")
	var s Spec
	switch {
	case len(f) == 3:
		for _, o := range strings.Split(f[2], ",") {
			switch o {
			case "ro", "rw":
				s.ReadOnly = o == "ro"
			case "sync":
				s.Sync = true
			default:
				return Spec{}, fmt.Errorf("%w: -v %q: unknown option %q: want HOST:GUEST or HOST:GUEST:ro (options ro, rw, sync, comma-separated)", ErrBadMount, spec, o)
			}
		}
	case len(f) != 2:
		return Spec{}, fmt.Errorf("%w: -v %q: want HOST:GUEST or HOST:GUEST:ro (no ':' in the paths)", ErrBadMount, spec)
	}
	s.Host, s.Guest = f[0], f[1]
	if !filepath.IsAbs(s.Host) {
		return Spec{}, fmt.Errorf("%w: -v %q: the host path must be absolute", ErrBadMount, spec)
	}
	if err := checkGuestPath(s.Guest); err != nil {
		return Spec{}, fmt.Errorf("%w: -v %q: %v", ErrBadMount, spec, err)
	}
	s.Host, s.Guest = filepath.Clean(s.Host), filepath.Clean(s.Guest)
	return s, nil
}

func checkGuestPath(p string) error {
	switch {
	case !filepath.IsAbs(p):
		return fmt.Errorf("the guest path %q must be absolute", p)
	case filepath.Clean(p) == "/":
		return errors.New("the guest path cannot be / (the VM's own root)")
	case strings.ContainsAny(p, " \t\n,\"'\\"):
		// It goes on the kernel command line.
		return fmt.Errorf("the guest path %q has a space, comma, quote or backslash", p)
	}
	for _, sys := range []string{"/proc", "/sys", "/dev", "/run"} {
		if c := filepath.Clean(p); c == sys || strings.HasPrefix(c, sys+"/") {
			return fmt.Errorf("the guest path %q is inside %s, which the guest's kernel owns", p, sys)
		}
	}
	return nil
}

// Caller is who asked for a mount: the host side acts with their rights.
type Caller struct {
	UID, GID int
	Groups   []int // supplementary groups
}

// Resolve checks a parsed mount for caller and returns it as the VM
// records it: the host path exists, is a directory the caller may read
// (and write, unless ro), symlinks resolved.
func Resolve(s Spec, c Caller) (api.Mount, error) {
	host, guest, ro := s.Host, s.Guest, s.ReadOnly
	real, err := filepath.EvalSymlinks(host)
	if err != nil {
		return api.Mount{}, fmt.Errorf("%w: -v %s: %v", ErrBadMount, host, errors.Unwrap(err))
	}
	fi, err := os.Stat(real)
	if err != nil {
		return api.Mount{}, fmt.Errorf("%w: -v %s: %v", ErrBadMount, host, err)
	}
	if !fi.IsDir() {
		return api.Mount{}, fmt.Errorf("%w: -v %s: not a directory: share the directory that holds it", ErrBadMount, host)
	}
	want := uint32(0o5) // read and search
	if !ro {
		want |= 0o2
	}
	if !may(fi, c, want) {
		what := "read it"
		if !ro {
			what = "read and write it (add :ro to share it read-only)"
		}
		return api.Mount{}, fmt.Errorf("%w: -v %s: you may not %s", ErrBadMount, host, what)
	}
	return api.Mount{Host: real, Guest: guest, ReadOnly: ro, UID: c.UID, GID: c.GID}, nil
}

// may reports whether c has the permission bits want (rwx as 0-7) on fi.
func may(fi os.FileInfo, c Caller, want uint32) bool {
	if c.UID == 0 {
		return true
	}
	st := fi.Sys().(*syscall.Stat_t)
	perm := uint32(fi.Mode().Perm())
	switch {
	case int(st.Uid) == c.UID:
		return (perm>>6)&want == want
	case int(st.Gid) == c.GID || slices.Contains(c.Groups, int(st.Gid)):
		return (perm>>3)&want == want
	}
	return perm&want == want
}

// Check refuses a set of mounts that overlap in the guest.
func Check(ms []api.Mount) error {
	for i, a := range ms {
		for _, b := range ms[:i] {
			if a.Guest == b.Guest {
				return fmt.Errorf("%w: two mounts at %s in the guest", ErrBadMount, a.Guest)
			}
		}
	}
	return nil
}

// Cmdline is the kernel command line parameter that has the guest's
// init stage mount m (see guestinit.Config).
func Cmdline(m api.Mount) string {
	s := "banger.mount=" + m.Tag + ":" + m.Guest
	if m.ReadOnly {
		s += ":ro"
	}
	return s
}

// script runs in virtiofsd's new mount namespace: it makes a read-only
// mount read-only there, lets virtiofsd hold as many files open as the
// hard limit allows (it keeps one per inode the guest looks up), and
// becomes virtiofsd.
const script = `set -e
mount --make-rprivate /
if [ "$BANGER_RO" = 1 ]; then mount --bind -o ro "$BANGER_SRC" "$BANGER_SRC"; fi
ulimit -n "$(ulimit -H -n)"
exec "$@"`

// Start runs a virtiofsd for m, serving the vhost-user socket sock
// (created here, for QEMU to connect to) and logging to logPath. The
// process outlives the daemon; it ends when its VMM disconnects. marker
// names it among processes (see Processes): virtiofsd forks its worker
// into a PID namespace of its own, and both carry the marker. opts tune
// the spawn (a start hook places it in its VM's cgroup).
func Start(bin string, m api.Mount, sock, logPath, marker string, opts ...system.SpawnOption) (*os.Process, error) {
	os.Remove(sock)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("virtio-fs socket for %s: %w", m.Host, err)
	}
	// The socket file stays for QEMU; only our end closes.
	l.SetUnlinkOnClose(false)
	defer l.Close()
	f, err := l.File()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	ro := "0"
	if m.ReadOnly {
		ro = "1"
	}
	args := []string{"-c", script, "virtiofsd", bin, "--fd=3", "--rlimit-nofile=0",
		"-o", "source=" + m.Host, "-o", "sandbox=namespace", "-o", "cache=auto", "-o", "xattr"}
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "BANGER_SRC=" + m.Host, "BANGER_RO=" + ro, MarkerEnv(marker)}
	p, err := system.SpawnIsolated("/bin/sh", args, env, logf, []*os.File{f}, m.UID, m.GID, opts...)
	if err != nil {
		os.Remove(sock)
		return nil, fmt.Errorf("starting virtiofsd for %s: %w", m.Host, err)
	}
	return p, nil
}

const markerVar = "BANGER_FS="

// MarkerEnv is the environment entry that names a process of marker
// (see Processes): synced mounts' helpers carry one too.
func MarkerEnv(marker string) string { return markerVar + marker }

// Processes lists the processes started with marker: the one Start
// returned (a shell until it becomes virtiofsd) and the worker it forked.
func Processes(marker string) []int {
	want := []byte(markerVar + marker + "\x00")
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !bytes.Contains(env, want) {
			continue
		}
		out = append(out, pid) // the marker is in no one else's environment
	}
	return out
}
