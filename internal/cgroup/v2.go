package cgroup

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// enableV2 enables the Manager's controllers for the children of the
// hierarchy's root and of the parent group, where they are not yet:
// a v2 group has a controller's files only if its parent enabled it.
func (m *Manager) enableV2(parent string) error {
	for _, d := range []string{m.h.unified, parent} {
		p := filepath.Join(d, "cgroup.subtree_control")
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("reading the controllers enabled in %s: %w", d, unavailableIf(err))
		}
		on := strings.Fields(string(b))
		var add []string
		for _, c := range m.controllers {
			if !slices.Contains(on, c) {
				add = append(add, "+"+c)
			}
		}
		if len(add) == 0 {
			continue
		}
		if err := writeFile(p, strings.Join(add, " ")); err != nil {
			return fmt.Errorf("enabling %s for the groups under %s: %w", strings.Join(add, " "), d, unavailableIf(err))
		}
	}
	return nil
}

// limitV2 applies l to group name's v2 interface files.
func (m *Manager) limitV2(name string, l Limits) error {
	d := m.dir("", name)
	has := func(c string) bool { return slices.Contains(m.controllers, c) }
	if !has("memory") || !has("cpu") || !has("pids") {
		// Only the membership test runs without them, with no limits.
		if l != (Limits{}) {
			return fmt.Errorf("cgroup %s: limits need the memory, cpu and pids controllers, and only %v are enabled", name, m.controllers)
		}
		return nil
	}
	memMax, swapMax := "max", "max"
	if l.MemoryBytes > 0 {
		memMax, swapMax = strconv.FormatInt(l.MemoryBytes, 10), "0"
	}
	if err := set(d, "memory.max", memMax); err != nil {
		return err
	}
	// Absent when the kernel does not account swap: then swap is not
	// charged and memory.max bounds RAM alone.
	if exists(filepath.Join(d, "memory.swap.max")) {
		if err := set(d, "memory.swap.max", swapMax); err != nil {
			return err
		}
	}
	if exists(filepath.Join(d, "memory.oom.group")) {
		if err := set(d, "memory.oom.group", "1"); err != nil {
			return err
		}
	}
	quota := "max"
	if q := l.cpuQuota(); q > 0 {
		quota = strconv.FormatInt(q, 10)
	}
	if err := set(d, "cpu.max", fmt.Sprintf("%s %d", quota, cpuPeriod)); err != nil {
		return err
	}
	return set(d, "pids.max", pidsMax(l))
}

func (m *Manager) statsV2(name string) (s Stats, err error) {
	d := m.dir("", name)
	if s.MemoryBytes, err = readUint(filepath.Join(d, "memory.current")); err != nil {
		return s, err
	}
	if s.MemoryPeakBytes, err = readUint(filepath.Join(d, "memory.peak")); err != nil {
		return s, err
	}
	if s.OOMKills, err = readKey(filepath.Join(d, "memory.events"), "oom_kill"); err != nil {
		return s, err
	}
	n, err := readUint(filepath.Join(d, "pids.current"))
	if err != nil {
		return s, err
	}
	s.Pids = int(n)
	usec, err := readKey(filepath.Join(d, "cpu.stat"), "usage_usec")
	if err != nil {
		return s, err
	}
	s.CPU = time.Duration(usec) * time.Microsecond
	return s, nil
}
