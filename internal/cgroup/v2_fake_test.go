package cgroup

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// THE ONE FAKE in this package's tests. No v2 hierarchy with memory,
// cpu and pids runs on the v1 CI hosts (those controllers are bound to
// v1, so a cgroup2 mount cannot have them), so the v2 limit and stats
// logic runs against a directory of plain files. fakeV2 stands in for
// the kernel: making a group creates the interface files of the
// controllers its parent enabled in cgroup.subtree_control, as the
// kernel does. Membership, StartIn, Remove and List on v2 run against
// this host's real (controller-less) unified mount in TestV2Membership.

// fakeV2 returns a Manager on a fake unified hierarchy at root, whose
// root cgroup has enabled the controllers in rootEnabled.
func fakeV2(t *testing.T, rootEnabled string, swapAccounting bool) (*Manager, string) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		"cgroup.controllers":     "cpuset cpu io memory hugetlb pids rdma misc\n",
		"cgroup.subtree_control": rootEnabled,
		"cgroup.procs":           "1\n",
	})
	m := newManager(hierarchy{mode: V2, unified: root}, "bgt-fake", v2Controllers)
	m.mkdir = func(dir string, perm os.FileMode) error {
		if err := os.Mkdir(dir, perm); err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join(filepath.Dir(dir), "cgroup.subtree_control"))
		if err != nil {
			return err
		}
		var on []string
		for _, f := range strings.Fields(string(b)) {
			on = append(on, strings.TrimPrefix(f, "+"))
		}
		files := map[string]string{
			"cgroup.procs": "", "cgroup.type": "domain\n", "cgroup.subtree_control": "",
			"cgroup.controllers": strings.Join(on, " ") + "\n",
			"cpu.stat":           "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
		}
		if slices.Contains(on, "memory") {
			files["memory.max"], files["memory.oom.group"] = "max\n", "0\n"
			files["memory.current"], files["memory.peak"] = "0\n", "0\n"
			files["memory.events"] = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"
			if swapAccounting {
				files["memory.swap.max"] = "max\n"
			}
		}
		if slices.Contains(on, "cpu") {
			files["cpu.max"], files["cpu.weight"] = "max 100000\n", "100\n"
		}
		if slices.Contains(on, "pids") {
			files["pids.max"], files["pids.current"] = "max\n", "0\n"
		}
		writeTree(t, dir, files)
		return nil
	}
	return m, root
}

func readTrim(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestV2Limits(t *testing.T) {
	tests := []struct {
		name           string
		rootEnabled    string
		swapAccounting bool
		limits         []Limits // applied in turn to one group: adoption re-applies
		want           map[string]string
	}{
		{
			name:           "limits, from a root with nothing enabled",
			swapAccounting: true,
			limits:         []Limits{{MemoryBytes: 64 << 20, CPUs: 0.5, Pids: 8}},
			want: map[string]string{
				"cgroup.subtree_control":              "+memory +cpu +pids",
				"bgt-fake/cgroup.subtree_control":     "+memory +cpu +pids",
				"bgt-fake/vm1/memory.max":             "67108864",
				"bgt-fake/vm1/memory.swap.max":        "0",
				"bgt-fake/vm1/memory.oom.group":       "1",
				"bgt-fake/vm1/cpu.max":                "50000 100000",
				"bgt-fake/vm1/pids.max":               "8",
				"bgt-fake/vm1/cgroup.subtree_control": "",
				"bgt-fake/vm1/cgroup.controllers":     "memory cpu pids",
			},
		},
		{
			name:           "root already enabled: left alone; limits lifted on re-create",
			rootEnabled:    "cpu memory pids",
			swapAccounting: true,
			limits:         []Limits{{MemoryBytes: 1 << 30, CPUs: 2, Pids: 100}, {}},
			want: map[string]string{
				"cgroup.subtree_control":       "cpu memory pids",
				"bgt-fake/vm1/memory.max":      "max",
				"bgt-fake/vm1/memory.swap.max": "max",
				"bgt-fake/vm1/cpu.max":         "max 100000",
				"bgt-fake/vm1/pids.max":        "max",
			},
		},
		{
			name:        "no swap accounting: memory.max alone",
			rootEnabled: "cpu memory pids",
			limits:      []Limits{{MemoryBytes: 256 << 20, CPUs: 1.25, Pids: 64}},
			want: map[string]string{
				"bgt-fake/vm1/memory.max": "268435456",
				"bgt-fake/vm1/cpu.max":    "125000 100000",
				"bgt-fake/vm1/pids.max":   "64",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, root := fakeV2(t, tt.rootEnabled, tt.swapAccounting)
			for _, l := range tt.limits {
				if err := m.Create("vm1", l); err != nil {
					t.Fatalf("Create(%+v): %v", l, err)
				}
			}
			for f, want := range tt.want {
				if got := readTrim(t, filepath.Join(root, f)); got != want {
					t.Errorf("%s = %q, want %q", f, got, want)
				}
			}
			if !tt.swapAccounting {
				if _, err := os.Stat(filepath.Join(root, "bgt-fake/vm1/memory.swap.max")); err == nil {
					t.Error("memory.swap.max written without swap accounting")
				}
			}
			if names, err := m.List(); err != nil || !slices.Equal(names, []string{"vm1"}) {
				t.Errorf("List() = %v, %v; want [vm1]", names, err)
			}
		})
	}
}

func TestV2Stats(t *testing.T) {
	m, root := fakeV2(t, "", true)
	if err := m.Create("vm1", Limits{MemoryBytes: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	writeTree(t, root, map[string]string{
		"bgt-fake/vm1/memory.current": "1048576\n",
		"bgt-fake/vm1/memory.peak":    "67100000\n",
		"bgt-fake/vm1/memory.events":  "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 1\n",
		"bgt-fake/vm1/pids.current":   "5\n",
		"bgt-fake/vm1/cpu.stat":       "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_periods 20\n",
	})
	got, err := m.Stats("vm1")
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{MemoryBytes: 1 << 20, MemoryPeakBytes: 67100000, OOMKills: 2, Pids: 5, CPU: 1500 * time.Millisecond}
	if got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
	// A kernel before 5.19 has no memory.peak: 0, not an error.
	os.Remove(filepath.Join(root, "bgt-fake/vm1/memory.peak"))
	if got, err := m.Stats("vm1"); err != nil || got.MemoryPeakBytes != 0 {
		t.Errorf("without memory.peak: %+v, %v", got, err)
	}
}
