package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeTree makes files (path relative to root → content) under root.
func writeTree(tb testing.TB, root string, files map[string]string) {
	tb.Helper()
	for p, content := range files {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

// TestScan runs the detection rules over mount tables whose mount
// points are directories of plain files standing in for cgroupfs: the
// one way to show v2 hosts (and broken ones) on this v1 machine. Each
// table's "@" is the fake root. The first case is this host's table.
func TestScan(t *testing.T) {
	const hostV1 = `31 23 0:28 / @ rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / @/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / @/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / @/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / @/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / @/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / @/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / @/unified rw,relatime - cgroup2 cgroup2 rw
`
	const pureV2 = "30 23 0:26 / @ rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
	tests := []struct {
		name      string
		mountinfo string
		files     map[string]string
		want      Mode
		v1        map[string]string // v1: controller → mount point relative to @
		unified   string            // v2: mount point relative to @
		whyHas    string            // Unavailable: part of the reason
	}{
		{
			name:      "this host: v1, hybrid unified with hugetlb only",
			mountinfo: hostV1,
			files:     map[string]string{"unified/cgroup.controllers": "hugetlb\n", "unified/cgroup.subtree_control": ""},
			want:      V1,
			v1:        map[string]string{"memory": "memory", "cpu": "cpu", "cpuacct": "cpuacct", "pids": "pids"},
		},
		{
			name:      "hybrid with an empty unified mount",
			mountinfo: hostV1,
			files:     map[string]string{"unified/cgroup.controllers": "", "unified/cgroup.subtree_control": ""},
			want:      V1,
			v1:        map[string]string{"memory": "memory", "cpu": "cpu", "cpuacct": "cpuacct", "pids": "pids"},
		},
		{
			name: "v1 with cpu and cpuacct mounted together",
			mountinfo: `25 20 0:22 / @/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
26 20 0:23 / @/memory rw,nosuid shared:10 - cgroup cgroup rw,memory
27 20 0:24 / @/pids rw,nosuid shared:11 - cgroup cgroup rw,pids
`,
			want: V1,
			v1:   map[string]string{"memory": "memory", "cpu": "cpu,cpuacct", "cpuacct": "cpu,cpuacct", "pids": "pids"},
		},
		{
			name: "v1: the hierarchy's root is preferred to a bind mount of a subtree",
			mountinfo: `90 20 0:23 /docker/abc @/bind/memory rw - cgroup cgroup rw,memory
26 20 0:23 / @/memory rw - cgroup cgroup rw,memory
25 20 0:22 / @/cpu rw - cgroup cgroup rw,cpu
27 20 0:24 / @/pids rw - cgroup cgroup rw,pids
`,
			want: V1,
			v1:   map[string]string{"memory": "memory", "cpu": "cpu", "pids": "pids"},
		},
		{
			name:      "v1 mount point with a space",
			mountinfo: "25 20 0:22 / @/c\\040g/cpu rw - cgroup cgroup rw,cpu\n26 20 0:23 / @/c\\040g/memory rw - cgroup cgroup rw,memory\n27 20 0:24 / @/c\\040g/pids rw - cgroup cgroup rw,pids\n",
			want:      V1,
			v1:        map[string]string{"memory": "c g/memory", "cpu": "c g/cpu", "pids": "c g/pids"},
		},
		{
			name:      "v1 without pids",
			mountinfo: "25 20 0:22 / @/cpu rw - cgroup cgroup rw,cpu\n26 20 0:23 / @/memory rw - cgroup cgroup rw,memory\n",
			want:      Unavailable,
			whyHas:    "no cgroup v1 pids controller",
		},
		{
			name:      "pure v2, controllers enabled",
			mountinfo: pureV2,
			files: map[string]string{"cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
				"cgroup.subtree_control": "cpu memory pids\n"},
			want:    V2,
			unified: ".",
		},
		{
			name:      "pure v2, the host's root cgroup, nothing enabled yet",
			mountinfo: pureV2,
			files: map[string]string{"cgroup.controllers": "cpu memory pids\n", "cgroup.subtree_control": "",
				"cgroup.procs": "1\n2\n"},
			want:    V2,
			unified: ".",
		},
		{
			name:      "v2 namespace root with processes of its own and nothing enabled",
			mountinfo: pureV2,
			files: map[string]string{"cgroup.controllers": "cpu memory pids\n", "cgroup.subtree_control": "",
				"cgroup.type": "domain\n", "cgroup.procs": "1\n"},
			want:   Unavailable,
			whyHas: "has processes of its own",
		},
		{
			name:      "v2 namespace root without processes",
			mountinfo: pureV2,
			files: map[string]string{"cgroup.controllers": "cpu memory pids\n", "cgroup.subtree_control": "",
				"cgroup.type": "domain\n", "cgroup.procs": ""},
			want:    V2,
			unified: ".",
		},
		{
			name:      "v2 missing pids, no v1",
			mountinfo: pureV2,
			files:     map[string]string{"cgroup.controllers": "cpu memory\n", "cgroup.subtree_control": "cpu memory\n"},
			want:      Unavailable,
			whyHas:    "has no pids controller",
		},
		{
			name:      "nothing mounted",
			mountinfo: "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n",
			want:      Unavailable,
			whyHas:    "no cgroup2 mounted",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, tt.files)
			h := scan(strings.ReplaceAll(tt.mountinfo, "@", strings.ReplaceAll(root, " ", `\040`)))
			if h.mode != tt.want {
				t.Fatalf("mode %v (%v), want %v", h.mode, h.why, tt.want)
			}
			switch tt.want {
			case V1:
				want := map[string]string{}
				for c, p := range tt.v1 {
					want[c] = filepath.Join(root, p)
				}
				if len(h.v1) != len(want) {
					t.Errorf("v1 mounts %v, want %v", h.v1, want)
				}
				for c, p := range want {
					if h.v1[c] != p {
						t.Errorf("%s mounted at %q, want %q", c, h.v1[c], p)
					}
				}
			case V2:
				if h.unified != filepath.Join(root, tt.unified) {
					t.Errorf("unified at %q, want %q", h.unified, filepath.Join(root, tt.unified))
				}
			case Unavailable:
				if !errors.Is(h.why, ErrUnavailable) || !strings.Contains(h.why.Error(), tt.whyHas) {
					t.Errorf("why = %v, want ErrUnavailable saying %q", h.why, tt.whyHas)
				}
			}
		})
	}
}

// TestDetectHost checks the rules against this host's real mounts: a
// v2 verdict must come with memory, cpu and pids in cgroup.controllers,
// whatever else is mounted.
func TestDetectHost(t *testing.T) {
	mode, err := Detect()
	t.Logf("this host: %v (%v)", mode, err)
	switch mode {
	case V2:
		b, _ := os.ReadFile("/proc/self/mountinfo")
		h := scan(string(b))
		ctrl, _ := os.ReadFile(filepath.Join(h.unified, "cgroup.controllers"))
		for _, c := range v2Controllers {
			if !strings.Contains(string(ctrl), c) {
				t.Errorf("v2 at %s without %s: %q", h.unified, c, ctrl)
			}
		}
	case Unavailable:
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("unavailable, but the error %v does not wrap ErrUnavailable", err)
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err == nil && mode != V1 {
		t.Errorf("the v1 memory controller is mounted, but Detect says %v", mode)
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/x\134y`: `/x\y`, `/trail\04`: `/trail\04`} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
