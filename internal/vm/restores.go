package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"banger/internal/api"
	"banger/internal/snapshot"
)

// This file is where a restored VM's memory comes from. A restore maps
// its snapshot's memory file copy-on-write (see vmm.Restorer): the
// pages the guest only reads stay the file's, in the page cache once for
// every VM restored from it, and a page it writes becomes its VMM's own.
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
