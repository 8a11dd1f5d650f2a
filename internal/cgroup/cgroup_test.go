package cgroup

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"syscall"
	"testing"
)

func TestLimitsValidate(t *testing.T) {
	tests := []struct {
		l       Limits
		wantErr []string // one substring per problem; none for valid
	}{
		{l: Limits{}},
		{l: Limits{MemoryBytes: 64 << 20, CPUs: 0.5, Pids: 8}},
		{l: Limits{CPUs: 0.01}},
		{l: Limits{CPUs: 64}},
		{l: Limits{CPUs: 0.005}, wantErr: []string{"CPU limit 0.005"}},
		{l: Limits{CPUs: math.NaN()}, wantErr: []string{"CPU limit NaN"}},
		{l: Limits{MemoryBytes: -1, CPUs: -1, Pids: -1}, wantErr: []string{"memory limit -1", "CPU limit -1", "pids limit -1"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%+v", tt.l), func(t *testing.T) {
			err := tt.l.Validate()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not report %q", err, w)
				}
			}
		})
	}
}

func TestCPUQuotaValue(t *testing.T) {
	for cpus, want := range map[float64]int64{0: 0, 0.01: 1000, 0.5: 50000, 1.25: 125000, 2: 200000, 1.0 / 3: 33333} {
		if got := (Limits{CPUs: cpus}).cpuQuota(); got != want {
			t.Errorf("cpuQuota(%v) = %d, want %d", cpus, got, want)
		}
	}
}

func TestNames(t *testing.T) {
	for name, ok := range map[string]bool{
		"3f2a9c0d1e2f3a4b5c6d7e8f": true, "banger": true, "banger-3f2a9c": true, "a_b": true,
		"": false, ".": false, "..": false, "a/b": false, "memory.max": false, "tasks.": false,
		"-x": false, "x y": false, strings.Repeat("a", 65): false, strings.Repeat("a", 64): true,
	} {
		if err := validName("cgroup", name); (err == nil) != ok {
			t.Errorf("validName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
	if _, err := New("../etc"); err == nil {
		t.Error("New accepted a parent that is a path")
	}
}

// On a host without cgroups, every method that writes says so with
// ErrUnavailable, so a caller can tell "no containment here" from a
// failure.
func TestUnavailable(t *testing.T) {
	m := newManager(scan(""), "bgt-none", v2Controllers)
	if m.Mode() != Unavailable {
		t.Fatalf("mode %v on a host without cgroup mounts", m.Mode())
	}
	calls := map[string]error{
		"Check":   m.Check(),
		"Create":  m.Create("vm", Limits{MemoryBytes: 1 << 30}),
		"Add":     m.Add("vm", 1),
		"StartIn": m.StartIn("vm", &syscall.SysProcAttr{}, func() error { t.Error("started"); return nil }),
	}
	for call, err := range calls {
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "mount cgroup2") {
			t.Errorf("%s: %v, want ErrUnavailable saying what to do", call, err)
		}
	}
	if names, err := m.List(); err != nil || len(names) != 0 {
		t.Errorf("List() = %v, %v; want nothing", names, err)
	}
	for errno, want := range map[syscall.Errno]bool{syscall.EACCES: true, syscall.EPERM: true, syscall.EROFS: true, syscall.EBUSY: false, syscall.EINVAL: false} {
		if got := errors.Is(unavailableIf(fmt.Errorf("mkdir x: %w", errno)), ErrUnavailable); got != want {
			t.Errorf("%v: ErrUnavailable %v, want %v", errno, got, want)
		}
	}
}
