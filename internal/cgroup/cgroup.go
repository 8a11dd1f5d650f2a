// Package cgroup contains processes in Linux control groups. A Manager
// makes one group per name under a parent group of the caller's choosing,
// limits the group's memory, CPU time and number of tasks, starts or
// moves processes into it, reports what it used, and removes it. It uses
// cgroup v2 where the host has a usable unified hierarchy and the v1
// memory, cpu and pids controllers (plus cpuacct, for CPU time) where it
// has not; see Detect for what "usable" means.
//
// It knows nothing of VMs or daemons. The caller names the groups (banger
// uses VM ids) and the parent (one per daemon instance, so that two
// daemons on one host never share groups), picks the limits, kills a
// group's processes before Remove, and decides which of the names List
// returns are orphans. The package itself never kills a process.
package cgroup

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Mode is how a host offers cgroups.
type Mode int

const (
	// Unavailable: no usable hierarchy, or no right to write one.
	Unavailable Mode = iota
	// V1: the legacy per-controller hierarchies (memory, cpu, pids).
	V1
	// V2: the unified hierarchy with memory, cpu and pids available.
	V2
)

func (m Mode) String() string {
	switch m {
	case V1:
		return "v1"
	case V2:
		return "v2"
	}
	return "unavailable"
}

var (
	// ErrUnavailable is wrapped by every error that means "this host (or
	// this user) cannot contain processes in cgroups". A caller that may
	// run without containment logs it once and carries on; one that may
	// not refuses to start the workload.
	ErrUnavailable = errors.New("cgroups unavailable")
	// ErrNotFound means the named group does not exist.
	ErrNotFound = errors.New("no such cgroup")
	// ErrBusy means a group still has processes, so it cannot be removed.
	ErrBusy = errors.New("cgroup still has processes")
)

// Limits are what a group's processes may use together. A zero field
// means no limit on that resource.
type Limits struct {
	// MemoryBytes bounds the group's memory, RAM and swap together (see
	// Manager.Create). Above it the kernel reclaims what it can within
	// the group, then OOM-kills a process of the group, and only of it.
	MemoryBytes int64
	// CPUs is CPU time per wall-clock second: 0.5 is half a CPU, 2 two
	// full CPUs, spread over any number of threads. The kernel enforces
	// it per 100 ms period, so the smallest quota is 0.01.
	CPUs float64
	// Pids bounds the group's tasks: processes and threads alike (a VMM
	// has a thread per vCPU and more). A fork or clone beyond it fails
	// with EAGAIN; nothing is killed.
	Pids int
}

// cpuPeriod is the CFS bandwidth period (the kernel's default), in µs.
const cpuPeriod = 100_000

// minCPUs is the kernel's smallest quota, 1 ms, over cpuPeriod.
const minCPUs = 1000.0 / cpuPeriod

// Validate reports every limit that cannot be applied.
func (l Limits) Validate() error {
	var errs []error
	if l.MemoryBytes < 0 {
		errs = append(errs, fmt.Errorf("memory limit %d: must be 0 (none) or positive", l.MemoryBytes))
	}
	if math.IsNaN(l.CPUs) || math.IsInf(l.CPUs, 0) || l.CPUs < 0 || (l.CPUs > 0 && l.CPUs < minCPUs) {
		errs = append(errs, fmt.Errorf("CPU limit %v: must be 0 (none) or at least %v", l.CPUs, minCPUs))
	}
	if l.Pids < 0 {
		errs = append(errs, fmt.Errorf("pids limit %d: must be 0 (none) or positive", l.Pids))
	}
	return errors.Join(errs...)
}

// cpuQuota is l.CPUs as a CFS quota in µs per cpuPeriod; 0 for none.
func (l Limits) cpuQuota() int64 {
	if l.CPUs == 0 {
		return 0
	}
	return int64(math.Round(l.CPUs * cpuPeriod))
}

// Stats is what a group has used. A field the kernel does not report
// (memory.peak before Linux 5.19, CPU time on v1 without cpuacct) is 0.
type Stats struct {
	// MemoryBytes is memory charged to the group now (v1
	// memory.usage_in_bytes, v2 memory.current).
	MemoryBytes uint64
	// MemoryPeakBytes is the most it was ever charged (v1
	// memory.max_usage_in_bytes, v2 memory.peak).
	MemoryPeakBytes uint64
	// OOMKills counts processes the kernel killed because the group hit
	// its memory limit (oom_kill in memory.oom_control or memory.events).
	OOMKills uint64
	// Pids is the number of tasks (processes and threads) in the group.
	Pids int
	// CPU is CPU time the group's tasks used (v1 cpuacct.usage, v2
	// usage_usec in cpu.stat).
	CPU time.Duration
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// validName rejects names that are not one plain path element. Dots are
// out so a group can never be taken for an interface file (memory.max).
func validName(what, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%s name %q: use letters, digits, _ and - (at most 64), starting with a letter or digit", what, name)
	}
	return nil
}

// v1Required are the v1 controllers a group must be made in.
var v1Required = []string{"memory", "cpu", "pids"}

// v1Controllers are those a group is made in: cpuacct too where it is
// mounted, for Stats.CPU only.
var v1Controllers = []string{"memory", "cpu", "pids", "cpuacct"}

// v2Controllers are the controllers enabled for v2 groups.
var v2Controllers = []string{"memory", "cpu", "pids"}

// Manager makes and removes the groups under one parent group. Its
// methods are safe for concurrent use, on different names; calls on one
// name must be serialised by the caller (banger holds the VM's lock).
type Manager struct {
	h      hierarchy
	parent string
	// controllers are the v2 controllers enabled in the parent and
	// limited per group: v2Controllers, except in the test that runs on
	// this host's controller-less unified mount.
	controllers []string
	// mkdir makes a cgroup directory: os.Mkdir, except in the test that
	// fakes the kernel's v2 interface files.
	mkdir func(path string, perm os.FileMode) error
}

// New returns a Manager for the groups under parent (one path element,
// such as "banger" or "banger-3f2a9c"), made at the top of each cgroup
// hierarchy. It detects the host's mode once. It fails only on an
// invalid parent name: on a host without usable cgroups the Manager's
// Mode is Unavailable, and Check and every method that writes return
// why, wrapping ErrUnavailable.
func New(parent string) (*Manager, error) {
	if err := validName("parent cgroup", parent); err != nil {
		return nil, err
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading the mount table: %w", err)
	}
	return newManager(scan(string(mountinfo)), parent, v2Controllers), nil
}

func newManager(h hierarchy, parent string, controllers []string) *Manager {
	return &Manager{h: h, parent: parent, controllers: controllers, mkdir: os.Mkdir}
}

// Mode is the host's cgroup mode as New found it.
func (m *Manager) Mode() Mode { return m.h.mode }

// Parent is the parent group's name.
func (m *Manager) Parent() string { return m.parent }

// Check reports why this process cannot make groups, wrapping
// ErrUnavailable, or nil when it can: the host has a usable hierarchy
// and this process may write it (root, or a hierarchy delegated to its
// user). A daemon calls it once at start to log or refuse.
func (m *Manager) Check() error {
	if m.h.mode == Unavailable {
		return m.h.why
	}
	for _, base := range m.bases() {
		dir := filepath.Join(base, m.parent)
		if _, err := os.Stat(dir); err != nil {
			dir = base
		}
		if err := access(dir); err != nil {
			return fmt.Errorf("%w: cannot write %s (%v): run bangerd as root, or delegate the hierarchy to its user", ErrUnavailable, dir, err)
		}
	}
	return nil
}

// bases are the hierarchy directories the parent is made in: one per
// distinct v1 mount (cpu and cpuacct may share one), or the v2 mount.
func (m *Manager) bases() []string {
	if m.h.mode == V2 {
		return []string{m.h.unified}
	}
	var out []string
	for _, c := range v1Controllers {
		if mp, ok := m.h.v1[c]; ok && !slices.Contains(out, mp) {
			out = append(out, mp)
		}
	}
	return out
}

// dirs are the group's directories, parallel to bases.
func (m *Manager) dirs(name string) []string {
	var out []string
	for _, b := range m.bases() {
		out = append(out, filepath.Join(b, m.parent, name))
	}
	return out
}

// dir is the group's directory in the hierarchy of controller c (v1),
// or its one directory (v2). It is "" on v1 when c is not mounted.
func (m *Manager) dir(c, name string) string {
	if m.h.mode == V2 {
		return filepath.Join(m.h.unified, m.parent, name)
	}
	mp, ok := m.h.v1[c]
	if !ok {
		return ""
	}
	return filepath.Join(mp, m.parent, name)
}

// Create makes group name with limits l, or re-applies l to the group
// if it exists: that is how a restarted daemon adopts the groups of the
// VMs that outlived it. On failure, directories this call made are
// removed again; an existing group is left as it was found.
//
// The memory limit covers RAM and swap together, so it is the most the
// group can cost the host whatever the host's swap: on v1 both
// memory.limit_in_bytes and memory.memsw.limit_in_bytes are set (the
// latter only where swap accounting is on; without it swap is not
// charged, and the limit bounds RAM alone), on v2 memory.max is set and
// memory.swap.max is 0. On v2 memory.oom.group is set too, so an OOM
// kills the group's processes together (a VMM without its virtiofsd, or
// the reverse, is of no use); v1 has no such switch and kills the
// largest process, normally the VMM, which holds the guest's memory.
func (m *Manager) Create(name string, l Limits) (err error) {
	if err := m.Check(); err != nil {
		return err
	}
	if err := validName("cgroup", name); err != nil {
		return err
	}
	if err := l.Validate(); err != nil {
		return fmt.Errorf("cgroup %s: %w", name, err)
	}
	var made []string
	defer func() {
		if err != nil {
			for _, d := range slices.Backward(made) {
				os.Remove(d)
			}
		}
	}()
	for _, d := range m.dirs(name) {
		if err := m.makeDir(filepath.Dir(d)); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		if m.h.mode == V2 {
			if err := m.enableV2(filepath.Dir(d)); err != nil {
				return err
			}
		}
		err := m.makeDir(d)
		if err == nil {
			made = append(made, d)
		} else if !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	if m.h.mode == V2 {
		return m.limitV2(name, l)
	}
	return m.limitV1(name, l)
}

func (m *Manager) makeDir(d string) error {
	if err := m.mkdir(d, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return err
		}
		return fmt.Errorf("making cgroup %s: %w", d, unavailableIf(err))
	}
	return nil
}

// unavailableIf adds ErrUnavailable to errors that mean this process
// may not write cgroups at all, rather than that one write went wrong.
func unavailableIf(err error) error {
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EROFS) {
		return fmt.Errorf("%w: %w: run bangerd as root, or delegate the hierarchy to its user", ErrUnavailable, err)
	}
	return err
}

// Add moves process pid, all its threads, into group name. Memory the
// process was charged before the move stays charged where it was, and
// it ran uncontained until now: prefer StartIn for processes this
// program starts; Add is for those it did not start itself.
func (m *Manager) Add(name string, pid int) error {
	if err := m.Check(); err != nil {
		return err
	}
	if err := validName("cgroup", name); err != nil {
		return err
	}
	for _, d := range m.dirs(name) {
		if err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return m.groupErr(name, fmt.Errorf("adding process %d to cgroup %s: %w", pid, name, err))
		}
	}
	return nil
}

// groupErr turns a missing group into ErrNotFound and a vanished
// process into a hint.
func (m *Manager) groupErr(name string, err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %s under %s: create it first (%w)", ErrNotFound, name, m.parent, err)
	}
	if errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("%w: the process has exited", err)
	}
	return err
}

// Procs lists the processes (thread group ids) in group name: in any of
// its v1 hierarchies, since a process may be in one and not another.
func (m *Manager) Procs(name string) ([]int, error) {
	if err := validName("cgroup", name); err != nil {
		return nil, err
	}
	var pids []int
	found := false
	for _, d := range m.dirs(name) {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listing the processes of cgroup %s: %w", name, err)
		}
		found = true
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
				pids = append(pids, pid)
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("%w: %s under %s", ErrNotFound, name, m.parent)
	}
	slices.Sort(pids)
	return pids, nil
}

// Remove deletes group name from every hierarchy. A group that does not
// exist (anywhere, or in some v1 hierarchies after a crash) is fine.
// It kills nothing: while processes remain, it returns an error
// wrapping ErrBusy that lists them, and the caller must stop them.
func (m *Manager) Remove(name string) error {
	if err := validName("cgroup", name); err != nil {
		return err
	}
	var errs []error
	for _, d := range m.dirs(name) {
		if err := rmdir(d); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			pids, _ := m.Procs(name)
			return fmt.Errorf("removing cgroup %s: %w (pids %v): stop them first", name, ErrBusy, pids)
		}
		return fmt.Errorf("removing cgroup %s: %w", name, unavailableIf(err))
	}
	return nil
}

// rmdir removes a cgroup directory. Tasks that just exited can keep a
// group busy for a moment after their parent saw them go; so can the
// thread StartIn used on v1, which ends right after StartIn returns. A
// busy group that lists no process is retried for a short while.
func rmdir(d string) error {
	for i := 0; ; i++ {
		err := syscall.Rmdir(d)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || i == 50 || populated(d) {
			return fmt.Errorf("rmdir %s: %w", d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// populated reports whether the group in d lists any task.
func populated(d string) bool {
	b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
	if err != nil {
		return true // cannot tell: do not wait for nothing
	}
	if len(strings.TrimSpace(string(b))) != 0 {
		return true
	}
	if b, err := os.ReadFile(filepath.Join(d, "tasks")); err == nil { // v1 only
		return len(strings.TrimSpace(string(b))) != 0
	}
	return false
}

// List returns the names of the groups under the parent, sorted: in any
// hierarchy, so that a group a crash left half made is found too. The
// caller removes those it no longer knows.
func (m *Manager) List() ([]string, error) {
	var names []string
	for _, b := range m.bases() {
		entries, err := os.ReadDir(filepath.Join(b, m.parent))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listing cgroups under %s: %w", m.parent, err)
		}
		for _, e := range entries {
			if e.IsDir() && !slices.Contains(names, e.Name()) {
				names = append(names, e.Name())
			}
		}
	}
	slices.Sort(names)
	return names, nil
}

// RemoveParent deletes the parent group once it holds no groups: for an
// uninstall, or a test's clean-up. A missing parent is fine.
func (m *Manager) RemoveParent() error {
	var errs []error
	for _, b := range m.bases() {
		d := filepath.Join(b, m.parent)
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		names, _ := m.List()
		return fmt.Errorf("removing parent cgroup %s (groups left: %v): %w", m.parent, names, err)
	}
	return nil
}

// Stats reports what group name has used.
func (m *Manager) Stats(name string) (Stats, error) {
	if err := validName("cgroup", name); err != nil {
		return Stats{}, err
	}
	mem := m.dir("memory", name)
	if _, err := os.Stat(mem); err != nil {
		return Stats{}, m.groupErr(name, fmt.Errorf("reading the stats of cgroup %s: %w", name, err))
	}
	if m.h.mode == V2 {
		return m.statsV2(name)
	}
	return m.statsV1(name)
}

// writeFile writes value to a cgroup interface file in one write, as
// the kernel parses each write on its own.
func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %q to %s: %w", value, path, err)
	}
	return nil
}

// set writes value to file in dir, with the error saying which limit.
func set(dir, file, value string) error {
	if err := writeFile(filepath.Join(dir, file), value); err != nil {
		if errors.Is(err, syscall.EBUSY) && strings.HasPrefix(file, "memory.") {
			return fmt.Errorf("%w: the group already uses more memory than that; raise the limit, or stop what runs in it", err)
		}
		return err
	}
	return nil
}

// exists reports whether a file is there; optional interface files
// depend on kernel version and boot options.
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// readUint reads a file holding one number; missing reads as 0.
func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return math.MaxUint64, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing %s: %w", path, err)
	}
	return v, nil
}

// readKey reads the value of key in a flat-keyed file ("key value"
// lines: memory.events, cpu.stat, memory.oom_control); missing reads
// as 0.
func readKey(path, key string) (uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok && k == key {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parsing %s in %s: %w", key, path, err)
			}
			return n, nil
		}
	}
	return 0, nil
}
