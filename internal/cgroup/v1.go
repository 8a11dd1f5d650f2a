package cgroup

import (
	"errors"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// limitV1 applies l to group name's v1 memory, cpu and pids groups.
func (m *Manager) limitV1(name string, l Limits) error {
	if err := setMemoryV1(m.dir("memory", name), l.MemoryBytes); err != nil {
		return err
	}
	cpu := m.dir("cpu", name)
	if err := set(cpu, "cpu.cfs_period_us", strconv.Itoa(cpuPeriod)); err != nil {
		return err
	}
	quota := "-1"
	if q := l.cpuQuota(); q > 0 {
		quota = strconv.FormatInt(q, 10)
	}
	if err := set(cpu, "cpu.cfs_quota_us", quota); err != nil {
		return err
	}
	return set(m.dir("pids", name), "pids.max", pidsMax(l))
}

// setMemoryV1 sets the RAM limit and, where swap accounting is on, the
// RAM+swap limit to the same value: the group may swap, but its RAM
// and swap together stay within the limit. The kernel refuses a RAM
// limit above the RAM+swap one, so when raising (re-applying larger
// limits to an adopted group) RAM+swap goes first.
func setMemoryV1(dir string, limit int64) error {
	v := "-1"
	if limit > 0 {
		v = strconv.FormatInt(limit, 10)
	}
	if !exists(filepath.Join(dir, "memory.memsw.limit_in_bytes")) {
		return set(dir, "memory.limit_in_bytes", v)
	}
	err := set(dir, "memory.limit_in_bytes", v)
	if errors.Is(err, syscall.EINVAL) {
		if err := set(dir, "memory.memsw.limit_in_bytes", v); err != nil {
			return err
		}
		return set(dir, "memory.limit_in_bytes", v)
	}
	if err != nil {
		return err
	}
	return set(dir, "memory.memsw.limit_in_bytes", v)
}

func pidsMax(l Limits) string {
	if l.Pids > 0 {
		return strconv.Itoa(l.Pids)
	}
	return "max"
}

func (m *Manager) statsV1(name string) (s Stats, err error) {
	mem := m.dir("memory", name)
	if s.MemoryBytes, err = readUint(filepath.Join(mem, "memory.usage_in_bytes")); err != nil {
		return s, err
	}
	if s.MemoryPeakBytes, err = readUint(filepath.Join(mem, "memory.max_usage_in_bytes")); err != nil {
		return s, err
	}
	if s.OOMKills, err = readKey(filepath.Join(mem, "memory.oom_control"), "oom_kill"); err != nil {
		return s, err
	}
	n, err := readUint(filepath.Join(m.dir("pids", name), "pids.current"))
	if err != nil {
		return s, err
	}
	s.Pids = int(n)
	if acct := m.dir("cpuacct", name); acct != "" {
		ns, err := readUint(filepath.Join(acct, "cpuacct.usage"))
		if err != nil {
			return s, err
		}
		s.CPU = time.Duration(ns)
	}
	return s, nil
}
