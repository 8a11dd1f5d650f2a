package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/client"
	"banger/internal/api"
	"banger/internal/vsockagent"
)

// TestSnapshotMeasurement sets warm starts against cold boots in one
// run, stage by stage: `vm run --rm -- true` through the same API calls
// the CLI makes, alternating cold (--cold) and warm (restored from the
// image's template). Then the snapshot of a 1 GiB VM (idle, and with
// 256 MiB of its memory written), and what ten forks of one snapshot
// add on disk: warm-ratio (warm/cold total), frozen-ms (the guest frozen
// for the idle snapshot) and fork-disk-MiB (disk added per fork). The
// rounds are inside: -benchtime 1x (bench/snapshot.sh checks the goals).
func BenchmarkSnapshot(b *testing.B) {
	report(b, measureSnapshot(b))
}

func measureSnapshot(t testing.TB) map[string]float64 {
	m := map[string]float64{}
	in := newInstance(t)
	vmFixtures(t, in)
	c := client.New(in.path("run", "bangerd.sock"))
	ctx := context.Background()
	req := api.VMCreateRequest{Image: "bb", Kernel: "k", VCPU: 1, MemoryMiB: 256, DiskBytes: 128 << 20, VMM: "qemu", Network: "none"}
	if _, err := c.WarmImage(ctx, api.WarmRequest{Image: "bb", Kernel: "k", VCPU: 1, MemoryMiB: 256, DiskBytes: 128 << 20, VMM: "qemu", Network: "none"}); err != nil {
		t.Fatal(err)
	}
	const rounds = 5
	samples := map[string][]time.Duration{}
	for i := 0; i < 2*rounds; i++ {
		kind := "cold"
		r := req
		r.Name, r.Cold = fmt.Sprintf("r%d", i), i%2 == 0
		if !r.Cold {
			kind = "warm"
		}
		t0 := time.Now()
		at := map[string]time.Time{}
		v, err := c.CreateVM(ctx, r, func(ev api.Event) {
			if ev.Type == api.EventProgress {
				at[ev.Stage] = time.Now()
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if (v.Origin != "") != (kind == "warm") {
			t.Fatalf("%s run %s: origin %q", kind, v.Name, v.Origin)
		}
		ready := time.Now()
		runTrue(t, c, v.Name)
		cmdDone := time.Now()
		if _, err := c.RemoveVM(ctx, v.Name, true); err != nil {
			t.Fatal(err)
		}
		end := time.Now()
		add := func(stage string, d time.Duration) { samples[kind+" "+stage] = append(samples[kind+" "+stage], d) }
		if kind == "cold" {
			add("disk", at["vmm"].Sub(t0))
			add("VMM start", at["boot"].Sub(at["vmm"]))
			add("boot to agent ready", ready.Sub(at["boot"]))
		} else {
			add("disk", at["restore"].Sub(t0))
			add("load memory and devices", at["identity"].Sub(at["restore"]))
			add("re-identify, agent ready", ready.Sub(at["identity"]))
		}
		add("command", cmdDone.Sub(ready))
		add("teardown", end.Sub(cmdDone))
		add("total", end.Sub(t0))
	}
	med := func(ds []time.Duration) time.Duration { return medianOf(append([]time.Duration{}, ds...)) }
	for _, kind := range []string{"cold", "warm"} {
		total := med(samples[kind+" total"])
		var keys []string
		for k := range samples {
			if strings.HasPrefix(k, kind+" ") {
				keys = append(keys, k)
			}
		}
		sort.Slice(keys, func(i, j int) bool { return samples[keys[i]][0] > samples[keys[j]][0] })
		for _, k := range keys {
			m := med(samples[k])
			t.Logf("%-32s %8s  %5.1f%%", k, m.Round(time.Millisecond), 100*float64(m)/float64(total))
		}
	}
	cold, warm := med(samples["cold total"]), med(samples["warm total"])
	t.Logf("vm run --rm -- true: warm %s against cold %s: %.2f× (median of %d each, alternating)",
		warm.Round(time.Millisecond), cold.Round(time.Millisecond), float64(warm)/float64(cold), rounds)
	m["warm-ratio"], m["warm-ms"], m["cold-ms"] = float64(warm)/float64(cold), ms(warm), ms(cold)

	// A 1 GiB VM: the snapshot's time and size, idle and with 256 MiB of
	// its memory written (random bytes, which no hole punching saves).
	big := req
	big.Name, big.MemoryMiB, big.Cold = "big", 1024, true
	if _, err := c.CreateVM(ctx, big, nil); err != nil {
		t.Fatal(err)
	}
	snap := func(name string) {
		t0 := time.Now()
		sn, err := c.SnapshotVM(ctx, "big", name)
		if err != nil {
			t.Fatal(err)
		}
		var parts []string
		for _, f := range sn.Files {
			parts = append(parts, fmt.Sprintf("%s %s of %s", f.Role, mib(f.DiskBytes), mib(f.SizeBytes)))
		}
		t.Logf("snapshot %-10s %6s wall, guest frozen %d ms, %s on disk (%s)", name, time.Since(t0).Round(time.Millisecond),
			sn.PausedMs, mib(sn.SizeBytes), strings.Join(parts, ", "))
		m["frozen-"+name+"-ms"] = float64(sn.PausedMs)
	}
	snap("idle")
	in.ok("vm", "exec", "big", "--", "sh", "-c", "mkdir -p /t && mount -t tmpfs -o size=400m tmpfs /t && dd if=/dev/urandom of=/t/f bs=1M count=256 2>/dev/null && sync")
	snap("written")
	t.Logf("snapshot files are sparse copies; this file system clones them by reflink: %v", reflinks(t, in.path()))

	// Ten forks of one snapshot: what they add on disk (their writable
	// disks) and in guest RAM files.
	before := duBytes(in.path("state", "vms"))
	ramBefore := ramBytes(in)
	t0 := time.Now()
	forks, err := c.ForkVM(ctx, api.ForkRequest{Source: "idle", Name: "f", Count: 10})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	after := duBytes(in.path("state", "vms"))
	t.Logf("fork -n 10 of the 1 GiB idle snapshot: %s (%s each); disk added %s (%s per fork), guest RAM files %s (%s per fork)",
		took.Round(time.Millisecond), (took / 10).Round(time.Millisecond), mib(after-before), mib((after-before)/10),
		mib(ramBytes(in)-ramBefore), mib((ramBytes(in)-ramBefore)/10))
	m["fork-disk-MiB"] = float64(after-before) / 10 / (1 << 20)
	for _, f := range forks {
		runTrue(t, c, f.Name)
		c.RemoveVM(ctx, f.Name, true)
	}
	c.RemoveVM(ctx, "big", true)
	return m
}

// runTrue runs `true` in a VM through its agent, as `vm run` does.
func runTrue(t testing.TB, c *client.Client, name string) {
	t.Helper()
	s, err := c.Agent(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Open(context.Background(), vsockagent.Request{Op: "exec", Argv: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	if e, err := st.Wait(context.Background()); err != nil || e.Code != 0 {
		t.Fatalf("%s: true: %+v %v", name, e, err)
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// duBytes is what the files under dir occupy on disk.
func duBytes(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	return n
}

func ramBytes(in *instance) int64 {
	var n int64
	for _, f := range in.ramFiles() {
		n += duBytes(f)
	}
	return n
}

// reflinks says whether cp --reflink=always works in dir.
func reflinks(t testing.TB, dir string) bool {
	a := filepath.Join(dir, "reflink-probe")
	os.WriteFile(a, []byte("x"), 0o644)
	defer os.Remove(a)
	defer os.Remove(a + ".2")
	return exec.Command("cp", "--reflink=always", a, a+".2").Run() == nil
}
