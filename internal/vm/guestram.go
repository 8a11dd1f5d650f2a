package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/vmm"
)

// This file is guest RAM that cannot be had: the room a boot needs in
// the RAM directory (a tmpfs), and why a VMM died of SIGBUS.

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
