package integration

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/client"
	"banger/internal/api"
	"banger/internal/vsockagent"
)

// BenchmarkVMRunStages splits `vm run --rm -- true` on a warm cache
// into its stages, through the same API calls the CLI makes, and sets
// the boot against the same QEMU command line launched by hand to the
// same ready line, in one run: boot-ratio (banger/by hand) and own-pct
// (banger's own stages, percent of the total). The rounds are inside:
// -benchtime 1x (bench/run.sh checks the goals).
func BenchmarkVMRunStages(b *testing.B) {
	report(b, measureVMRunStages(b))
}

func measureVMRunStages(t testing.TB) map[string]float64 {
	in := newInstance(t)
	vmFixtures(t, in)
	c := client.New(in.path("run", "bangerd.sock"))
	ctx := context.Background()
	const rounds = 5
	// No network: the baseline below boots without one too (a VM's
	// network costs about 1 ms, bench/net.sh).
	stages := []string{"resolve", "create disk", "VMM start", "kernel boot", "guest init", "command", "teardown", "total"}
	samples := map[string][]time.Duration{}
	initRE := regexp.MustCompile(`banger-init: \[(\d+\.\d+)\]`)
	for i := 0; i < rounds; i++ {
		name := fmt.Sprintf("r%d", i)
		t0 := time.Now()
		if _, err := c.Config(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Image(ctx, "bb"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Kernel(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		at := map[string]time.Time{"resolve": time.Now()}
		// Cold: the stages are a boot's (bench/snapshot.sh has the warm
		// starts).
		v, err := c.CreateVM(ctx, api.VMCreateRequest{Name: name, Image: "bb", Kernel: "k", VCPU: 1, MemoryMiB: 256, DiskBytes: 128 << 20, VMM: "qemu", Network: "none", Cold: true},
			func(ev api.Event) {
				if ev.Type == api.EventProgress {
					at[ev.Stage] = time.Now()
				}
			})
		if err != nil {
			t.Fatal(err)
		}
		ready := time.Now()
		s, err := c.Agent(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		st, err := s.Open(context.Background(), vsockagent.Request{Op: "exec", Argv: []string{"true"}})
		if err != nil {
			t.Fatal(err)
		}
		st.CloseWrite()
		if e, err := st.Wait(ctx); err != nil || e.Code != 0 {
			t.Fatalf("true: %+v %v", e, err)
		}
		s.Close()
		cmdDone := time.Now()
		// The guest's own clock splits the boot: the init stage stamps its
		// lines with seconds since the kernel started.
		kernelPart, initPart := ready.Sub(at["boot"]), time.Duration(0)
		if logs, err := os.ReadFile(v.Dir + "/console.log"); err == nil {
			if m := initRE.FindAllStringSubmatch(string(logs), -1); len(m) > 1 {
				first, _ := strconv.ParseFloat(m[0][1], 64)
				last, _ := strconv.ParseFloat(m[len(m)-1][1], 64)
				initPart = time.Duration((last - first) * float64(time.Second))
				kernelPart -= initPart
			}
		}
		tdStart := time.Now()
		if _, err := c.RemoveVM(ctx, name, true); err != nil {
			t.Fatal(err)
		}
		end := time.Now()
		for stage, d := range map[string]time.Duration{
			"resolve": at["resolve"].Sub(t0), "create disk": at["vmm"].Sub(at["resolve"]),
			"VMM start": at["boot"].Sub(at["vmm"]), "kernel boot": kernelPart, "guest init": initPart,
			"command": cmdDone.Sub(ready), "teardown": end.Sub(tdStart), "total": end.Sub(t0) - tdStart.Sub(cmdDone),
		} {
			samples[stage] = append(samples[stage], d)
		}
	}
	// The baseline: a VM like those, started once by banger for its QEMU
	// command line, then booted by hand to the same ready line.
	var base vmJSON
	in.jsonOut(&base, "vm", "create", "--name", "base", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--network", "none", "--cold", "--json")
	raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", base.PID))
	argv, dir := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00"), base.Dir
	in.ok("vm", "stop", "base")
	var byHand []time.Duration
	for i := 0; i < rounds; i++ {
		byHand = append(byHand, bootByHand(t, argv, dir))
	}
	total := medianOf(samples["total"])
	for _, s := range stages {
		m := medianOf(samples[s])
		t.Logf("%-12s %8s  %5.1f%%", s, m.Round(time.Millisecond), 100*float64(m)/float64(total))
	}
	boot := medianOf(samples["VMM start"]) + medianOf(samples["kernel boot"]) + medianOf(samples["guest init"])
	h := medianOf(byHand)
	own := 100 * float64(medianOf(samples["resolve"])+medianOf(samples["create disk"])+medianOf(samples["command"])+medianOf(samples["teardown"])) / float64(total)
	t.Logf("boot (VMM start to agent ready) %s against the same QEMU by hand %s: %.2f; banger's own stages (resolve, disk, command, teardown) are %.1f%% of the total",
		boot.Round(time.Millisecond), h.Round(time.Millisecond), float64(boot)/float64(h), own)
	return map[string]float64{"boot-ratio": float64(boot) / float64(h), "own-pct": own, "total-ms": ms(total)}
}

// medianOf is the median of ds (sorted in place).
func medianOf(ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
}
