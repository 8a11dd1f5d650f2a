package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/snapshot"
	"banger/internal/vmm"
)

// This file is where a restored VM's memory comes from and where a
// running VM's memory goes. A restore maps its snapshot's memory file
// copy-on-write (see vmm.Restorer): the pages the guest only reads stay
// the file's, in the page cache once for every VM restored from it, and
// a page it writes becomes its VMM's own. Which running VMs map a
// snapshot, and how much of each VM's memory is shared or its own, are
// read off the host (/proc) when asked, never recorded: they cannot go
// stale, and hold across daemon restarts.
//
// A snapshot in use cannot disappear under its VMs: the kernel keeps a
// mapped file until its last mapping goes, so removing the snapshot
// (its record, name and directory entries) frees its memory file's
// space only once the last VM restored from it stops. Restores hold the
// snapshot's lock for reading while they open its files; removal takes
// it for writing, so it never races a restore half way.

// snapshotLocks are the snapshots' read-write locks, by snapshot id.
type snapshotLocks struct {
	mu sync.Mutex
	m  map[string]*snapshotLock
}

type snapshotLock struct {
	sync.RWMutex
	refs int
}

// snapshotLock takes snapshot id's lock, for writing (removal) or
// reading (restores, any number at once); the caller unlocks.
func (s *Service) snapshotLock(id string, write bool) (unlock func()) {
	s.snapLocks.mu.Lock()
	if s.snapLocks.m == nil {
		s.snapLocks.m = map[string]*snapshotLock{}
	}
	l := s.snapLocks.m[id]
	if l == nil {
		l = &snapshotLock{}
		s.snapLocks.m[id] = l
	}
	l.refs++
	s.snapLocks.mu.Unlock()
	if write {
		l.Lock()
	} else {
		l.RLock()
	}
	return func() {
		if write {
			l.Unlock()
		} else {
			l.RUnlock()
		}
		s.snapLocks.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(s.snapLocks.m, id)
		}
		s.snapLocks.mu.Unlock()
	}
}

// mappedSnapshot is the memory file a running VM's VMM maps
// copy-on-write, and its size when the snapshot was written.
type mappedSnapshot struct {
	name, path string
	size       int64
}

func (s *Service) setMapped(id string, m *mappedSnapshot) {
	s.vms.mu.Lock()
	defer s.vms.mu.Unlock()
	if s.vms.mapped == nil {
		s.vms.mapped = map[string]*mappedSnapshot{}
	}
	if m == nil {
		delete(s.vms.mapped, id)
	} else {
		s.vms.mapped[id] = m
	}
}

func (s *Service) mappedOf(id string) *mappedSnapshot {
	s.vms.mu.Lock()
	defer s.vms.mu.Unlock()
	return s.vms.mapped[id]
}

// mappedFrom is what a VM restored from sn maps.
func mappedFrom(sn api.Snapshot) *mappedSnapshot {
	m := &mappedSnapshot{name: sn.Name, path: snapshot.Paths(sn.Dir).Memory}
	for _, f := range sn.Files {
		if f.Role == "memory" {
			m.size = f.SizeBytes
		}
	}
	return m
}

// ramRoom is the guest RAM promised to boots under way, in the RAM
// directory's file system (a tmpfs), by the boots' estimates.
type ramRoom struct {
	mu      sync.Mutex
	pending int64
}

// bootRAMMargin is what a booting guest touches beyond its kernel and
// initrd: measured here, a busybox guest's RAM file held 97 MiB once
// ready, its vmlinux 51 MiB and initrd 5 MiB (loaded, then unpacked).
const bootRAMMargin = 32 << 20

// reserveBootRAM checks that the RAM directory's file system has room
// for what v's guest will touch while it boots (its kernel, initrd and
// a margin, at most its memory), counting what boots under way were
// promised, and promises it until release (once the boot is over, its
// pages show in the file system's use). Boots that arrive together on a
// file system with room for some: those that fit start, the others are
// refused at once, before anything is made.
func (s *Service) reserveBootRAM(v api.VM, k api.Kernel) (release func(), err error) {
	need := int64(bootRAMMargin)
	for _, f := range []string{k.Vmlinux, k.Initrd, k.Initrd} {
		if fi, err := os.Stat(f); err == nil && f != "" {
			need += fi.Size()
		}
	}
	need = min(need, int64(v.MemoryMiB)<<20)
	dir := s.layout.RAMDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return func() {}, nil // made at the VMM's start; it says what is wrong
	}
	free := int64(st.Bavail) * st.Bsize
	s.ram.mu.Lock()
	defer s.ram.mu.Unlock()
	if free-s.ram.pending < need {
		promised := ""
		if s.ram.pending > 0 {
			promised = fmt.Sprintf(", %s of it promised to VMs booting now", sizeText(s.ram.pending))
		}
		return nil, fmt.Errorf("guest RAM: %s has %s free%s, and a VM booting touches about %s there: start fewer VMs at once or make room (remove stopped VMs, or give %s more), then `banger vm start %s`",
			dir, sizeText(free), promised, sizeText(need), filepath.Dir(dir), v.Name)
	}
	s.ram.pending += need
	return func() {
		s.ram.mu.Lock()
		s.ram.pending -= need
		s.ram.mu.Unlock()
	}, nil
}

// findMapped finds the snapshot memory file the running VM v's VMM maps
// (after a daemon restart); nil for a booted VM, or when the snapshot
// was removed.
func (s *Service) findMapped(ctx context.Context, v api.VM) *mappedSnapshot {
	ms, err := readMappings(v.PID, "maps")
	if err != nil {
		return nil
	}
	sns, err := s.store.Snapshots(ctx)
	if err != nil {
		return nil
	}
	for _, m := range ms {
		if id, ok := s.snapshotMemoryID(m.path); ok {
			for _, sn := range sns {
				if sn.ID == id {
					return mappedFrom(sn)
				}
			}
		}
	}
	return nil
}

// snapshotMemoryID is the id of the snapshot whose memory file path is.
func (s *Service) snapshotMemoryID(path string) (string, bool) {
	dir := filepath.Dir(path)
	if filepath.Base(path) != snapshot.MemoryFile || filepath.Dir(dir) != s.layout.SnapshotsDir() {
		return "", false
	}
	return filepath.Base(dir), true
}

// damagedMemory says how the memory file a VM mapped changed under it
// ("" when it did not, or is gone: unlinking is safe). A file cut short
// kills the VMM that touches a page past its new end (SIGBUS).
func damagedMemory(m *mappedSnapshot) string {
	if m == nil {
		return ""
	}
	fi, err := os.Stat(m.path)
	if err != nil || fi.Size() == m.size {
		return ""
	}
	return fmt.Sprintf("the memory file of snapshot %q, which this VM's memory maps, was changed while it ran (%d bytes, %d were written): its guest lost its memory; start it again (it boots from its own disk), and remove the snapshot (`banger snapshot rm %s`)", m.name, fi.Size(), m.size, m.name)
}

// busError says why v's VMM m, which has exited, died of SIGBUS: the
// signal of a page of guest RAM that cannot be had. A booted VM's RAM
// file is on a file system that filled up (a tmpfs, /dev/shm); a
// restored VM's snapshot memory file was cut short under it. "" when m
// died otherwise, or how is unknown (a VMM this daemon adopted).
func (s *Service) busError(v api.VM, m vmm.Machine, mapped *mappedSnapshot) string {
	e, ok := m.(interface {
		ExitSignal() (syscall.Signal, bool)
	})
	if !ok {
		return damagedMemory(mapped)
	}
	sig, known := e.ExitSignal()
	if !known {
		return damagedMemory(mapped)
	}
	return s.signalled(v, sig, mapped)
}

// startError adds to err, a VMM's start or restore that failed, why its
// VMM died when busError knows.
func (s *Service) startError(v api.VM, err error, from *restoreFrom) error {
	var xe *vmm.ExitError
	if !errors.As(err, &xe) {
		return err
	}
	var mapped *mappedSnapshot
	if from != nil {
		mapped = mappedFrom(from.snap)
	}
	if why := s.signalled(v, xe.Signal, mapped); why != "" {
		return fmt.Errorf("%s; %w", why, err)
	}
	return err
}

// signalled is busError's answer for a VMM that died of sig.
func (s *Service) signalled(v api.VM, sig syscall.Signal, mapped *mappedSnapshot) string {
	if sig != syscall.SIGBUS {
		return ""
	}
	if why := damagedMemory(mapped); why != "" || mapped != nil {
		return why
	}
	dir := s.layout.RAMDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return ""
	}
	free, total := int64(st.Bavail)*st.Bsize, int64(st.Blocks)*st.Bsize
	return fmt.Sprintf("guest RAM: the file system of %s is full (%s free of %s): the guest could not have the memory it touched; start fewer VMs at once or make room there (remove stopped VMs, or give /dev/shm more), then `banger vm start %s`",
		dir, sizeText(free), sizeText(total), v.Name)
}

// mapping is one entry of /proc/PID/smaps, sizes in bytes.
type mapping struct {
	path      string // " (deleted)" cut off
	dev       string // major:minor, hex, as /proc prints it
	ino       uint64
	rss, anon int64
}

// parseSmaps reads /proc/PID/smaps (or /proc/PID/maps, without sizes).
func parseSmaps(r io.Reader) []mapping {
	var out []mapping
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			m := mapping{dev: f[3]}
			m.ino, _ = strconv.ParseUint(f[4], 10, 64)
			if len(f) > 5 {
				// The path is the rest of the line (it may hold spaces).
				i := strings.Index(line, f[5])
				m.path = strings.TrimSuffix(line[i:], " (deleted)")
			}
			out = append(out, m)
			continue
		}
		if len(out) == 0 || len(f) < 2 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "Rss:":
			out[len(out)-1].rss = n << 10
		case "Anonymous:":
			out[len(out)-1].anon = n << 10
		}
	}
	return out
}

// readMappings reads the mappings of pid from /proc/PID/file (maps or
// smaps).
func readMappings(pid int, file string) ([]mapping, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		return nil, err
	}
	return parseSmaps(bytes.NewReader(b)), nil
}

// rollupAnon is the anonymous memory of pid, from smaps_rollup.
func rollupAnon(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Anonymous:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, err := strconv.ParseInt(f[0], 10, 64)
				return n << 10, err
			}
		}
	}
	return 0, fmt.Errorf("no Anonymous in /proc/%d/smaps_rollup", pid)
}

// fileKey is a file as mappings name it: device and inode.
func fileKey(path string) (dev string, ino uint64, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", 0, err
	}
	return fmt.Sprintf("%02x:%02x", unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev))), st.Ino, nil
}

// snapshotUsers lists the running VMs whose VMM maps sn's memory file,
// by name: by its device and inode, so a VMM in a jail (a hard link)
// counts too. A snapshot whose file is gone has none that could start.
func (s *Service) snapshotUsers(ctx context.Context, sn api.Snapshot) ([]api.VM, error) {
	byFile, err := s.mappedFiles(ctx)
	if err != nil {
		return nil, err
	}
	return usersOf(byFile, sn), nil
}

// mappedFiles are the running VMs by the files their VMMs map ("dev
// inode" keys).
func (s *Service) mappedFiles(ctx context.Context) (map[string][]api.VM, error) {
	vms, err := s.store.VMs(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]api.VM{}
	for _, v := range vms {
		if !State(v.State).Live() || !vmmProcess(v.PID, v.Dir) {
			continue
		}
		ms, _ := readMappings(v.PID, "maps")
		seen := map[string]bool{}
		for _, m := range ms {
			k := m.dev + " " + strconv.FormatUint(m.ino, 10)
			if m.ino != 0 && !seen[k] {
				seen[k] = true
				out[k] = append(out[k], v)
			}
		}
	}
	return out, nil
}

// usersOf picks the VMs that map sn's memory file out of byFile.
func usersOf(byFile map[string][]api.VM, sn api.Snapshot) []api.VM {
	dev, ino, err := fileKey(snapshot.Paths(sn.Dir).Memory)
	if err != nil {
		return nil // gone: no VM can have started from it since
	}
	return byFile[dev+" "+strconv.FormatUint(ino, 10)]
}

// withUsers fills in sn's users (from byFile) as c may see them.
func withUsers(c Caller, byFile map[string][]api.VM, sn api.Snapshot) api.Snapshot {
	users := usersOf(byFile, sn)
	sn.InUse, sn.UsedBy = len(users), nil
	for _, v := range users {
		if c.sees(v.Owner) {
			sn.UsedBy = append(sn.UsedBy, v.Name)
		}
	}
	sort.Strings(sn.UsedBy)
	return sn
}

// vmMemory reads where running VM v's memory goes (see api.VMMemory);
// nil when it does not run or its VMM cannot be read.
func (s *Service) vmMemory(ctx context.Context, v api.VM) *api.VMMemory {
	if !State(v.State).Live() || !vmmProcess(v.PID, v.Dir) {
		return nil
	}
	ms, err := readMappings(v.PID, "smaps")
	if err != nil {
		return nil
	}
	anon, err := rollupAnon(v.PID)
	if err != nil {
		return nil
	}
	mem := &api.VMMemory{OwnBytes: anon}
	ownRAM := s.layout.RAMFile(v.ID)
	for _, m := range ms {
		if m.path == ownRAM {
			// A booted VM's RAM: a file of its own, shared with no one.
			mem.GuestOwnBytes += m.rss
			mem.OwnBytes += m.rss
			continue
		}
		id, ok := s.snapshotMemoryID(m.path)
		if !ok {
			continue
		}
		mem.GuestOwnBytes += m.anon
		mem.SharedBytes += m.rss - m.anon
		mem.Snapshot = id + " (removed)"
		if sns, err := s.store.Snapshots(ctx); err == nil {
			for _, sn := range sns {
				if sn.ID == id {
					mem.Snapshot = sn.Name
				}
			}
		}
	}
	if s.cg != nil {
		if st, err := s.cg.Stats(v.ID); err == nil {
			mem.CgroupBytes, mem.OOMKills = int64(st.MemoryBytes), st.OOMKills
			mem.CgroupLimitBytes = limits(v, s.memOverhead).MemoryBytes
		}
	}
	return mem
}
