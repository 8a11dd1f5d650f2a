package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// hierarchy is where a host's cgroups are mounted and which mode to use.
type hierarchy struct {
	mode    Mode
	unified string            // v2: the unified hierarchy's mount point
	v1      map[string]string // v1: controller → mount point
	v1root  map[string]string // v1: mount point → the cgroup it shows ("/", or a subtree)
	why     error             // Unavailable: why, wrapping ErrUnavailable
}

// Detect reports the mode a Manager would use on this host, and when it
// is Unavailable why, wrapping ErrUnavailable.
//
// v2 is usable only when a cgroup2 file system lists memory, cpu and
// pids in its root's cgroup.controllers and they can be enabled for
// children in its cgroup.subtree_control: they already are, or the
// mount is the host's root cgroup (which may always enable them), or a
// group without processes of its own (which may too; a container's
// namespace root that has processes may not). A hybrid host's
// "unified" mount, whose controllers are all bound to v1, is not
// usable v2, however readable it is. v1 is usable when memory, cpu and
// pids are each mounted, alone or together (cpu,cpuacct). v2 wins when
// both are usable. Detect only reads; it does not check that this
// process may write (Manager.Check does).
func Detect() (Mode, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return Unavailable, fmt.Errorf("reading the mount table: %w", err)
	}
	h := scan(string(b))
	return h.mode, h.why
}

// mount is one cgroup line of /proc/self/mountinfo.
type mount struct {
	root, point, fstype string
	options             []string // super options: v1 controllers, name=…
}

// parseMountinfo returns the cgroup and cgroup2 mounts in mountinfo.
func parseMountinfo(mountinfo string) []mount {
	var out []mount
	for line := range strings.Lines(mountinfo) {
		// id parent major:minor root point options [optional…] - fstype source super
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 1 || (g[0] != "cgroup" && g[0] != "cgroup2") {
			continue
		}
		m := mount{root: unescape(f[3]), point: unescape(f[4]), fstype: g[0]}
		if len(g) >= 3 {
			m.options = strings.Split(g[2], ",")
		}
		out = append(out, m)
	}
	return out
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// scan finds the hierarchy to use from the text of /proc/self/mountinfo,
// reading the interface files under the mount points it names (the
// tests give mount points in a temporary directory).
func scan(mountinfo string) hierarchy {
	mounts := parseMountinfo(mountinfo)
	// A mount of the hierarchy's root ("/") is preferred to a bind mount
	// of a subtree; the first wins among equals.
	slices.SortStableFunc(mounts, func(a, b mount) int {
		return boolRank(a.root != "/") - boolRank(b.root != "/")
	})
	var v2err error
	for _, m := range mounts {
		if m.fstype != "cgroup2" {
			continue
		}
		if v2err = v2Usable(m.point); v2err == nil {
			return hierarchy{mode: V2, unified: m.point}
		}
	}
	v1, v1root := map[string]string{}, map[string]string{}
	for _, m := range mounts {
		if m.fstype != "cgroup" {
			continue
		}
		for _, c := range m.options {
			if _, ok := v1[c]; !ok && slices.Contains(v1Controllers, c) {
				v1[c], v1root[m.point] = m.point, m.root
			}
		}
	}
	var missing []string
	for _, c := range v1Required {
		if _, ok := v1[c]; !ok {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return hierarchy{mode: V1, v1: v1, v1root: v1root}
	}
	why := fmt.Errorf("%w: no cgroup v1 %s controller mounted", ErrUnavailable, strings.Join(missing, ", "))
	if v2err != nil {
		why = fmt.Errorf("%w, and %w", why, v2err)
	} else {
		why = fmt.Errorf("%w, and no cgroup2 mounted", why)
	}
	return hierarchy{why: fmt.Errorf("%w: mount cgroup2 on /sys/fs/cgroup with memory, cpu and pids (or the v1 controllers), or allow VMs without containment", why)}
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// v2Usable says why the cgroup2 mount at dir cannot hold limited groups,
// or nil when it can (see Detect).
func v2Usable(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("cgroup2 at %s: %w", dir, err)
	}
	have := strings.Fields(string(b))
	var missing []string
	for _, c := range v2Controllers {
		if !slices.Contains(have, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("cgroup2 at %s has no %s controller (bound to v1, or disabled)", dir, strings.Join(missing, ", "))
	}
	b, err = os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return fmt.Errorf("cgroup2 at %s: %w", dir, err)
	}
	enabled := strings.Fields(string(b))
	if !slices.ContainsFunc(v2Controllers, func(c string) bool { return !slices.Contains(enabled, c) }) {
		return nil
	}
	// The host's root cgroup has no cgroup.type and is exempt from the
	// rule that a group with processes cannot enable controllers for
	// its children.
	if _, err := os.Stat(filepath.Join(dir, "cgroup.type")); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil && len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	return fmt.Errorf("cgroup2 at %s cannot enable memory, cpu and pids for child groups: it is not the root cgroup and has processes of its own (a container without cgroup delegation?)", dir)
}

// access reports whether this process may make groups in dir.
func access(dir string) error {
	return unix.Access(dir, unix.W_OK)
}
