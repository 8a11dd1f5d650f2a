package vm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/snapshot"
)

// This file is where a running VM's memory goes, and which running VMs
// map a snapshot's memory file: both read off the host (/proc) when
// asked, never recorded, so they cannot go stale and hold across daemon
// restarts.

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
