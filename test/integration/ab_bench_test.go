package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/testenv"
)

// BenchmarkAB sets two builds of banger against each other in one run,
// interleaved (each iteration measures both, in turn, so the machine's
// noise falls on both alike): `vm run --rm -- true` booted cold and
// restored warm, the round trip of `vm exec VM -- true` (median of 15),
// and bangerd's resident memory when idle. It reports each side and the
// new/old ratio. BANGER_AB="OLD_BIN_DIR NEW_BIN_DIR"; bench/ab.sh builds
// the two and checks the ratios against a goal.
func BenchmarkAB(b *testing.B) {
	dirs := strings.Fields(os.Getenv("BANGER_AB"))
	if len(dirs) != 2 {
		testenv.Skip(b, "a comparison of two builds: run bench/ab.sh OLD NEW (it sets BANGER_AB)")
	}
	sides := []*abSide{{name: "old", bins: dirs[0]}, {name: "new", bins: dirs[1]}}
	for _, s := range sides {
		s.in = newInstanceWith(b, s.bins)
		vmFixtures(b, s.in)
		// The warm template, and the VM that exec round trips go to.
		s.in.ok("vm", "run", "--rm", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--network", "none", "--", "true")
		s.in.ok("vm", "create", "--name", "ab", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--network", "none")
	}
	run := []string{"vm", "run", "--rm", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--network", "none"}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, s := range sides {
			s.cold = append(s.cold, timed(s.in, append(append([]string{}, run...), "--cold", "--", "true")...))
			s.warm = append(s.warm, timed(s.in, append(append([]string{}, run...), "--", "true")...))
			var rtt []time.Duration
			for j := 0; j < 15; j++ {
				rtt = append(rtt, timed(s.in, "vm", "exec", "ab", "--", "true"))
			}
			s.exec = append(s.exec, median(rtt))
		}
	}
	b.StopTimer()
	time.Sleep(3 * time.Second) // idle
	for _, s := range sides {
		s.rss = daemonRSS(b, s.in)
	}
	old, nw := sides[0], sides[1]
	for _, m := range []struct {
		name     string
		old, new float64
	}{
		{"cold-run-ms", ms(median(old.cold)), ms(median(nw.cold))},
		{"warm-run-ms", ms(median(old.warm)), ms(median(nw.warm))},
		{"exec-rtt-ms", ms(median(old.exec)), ms(median(nw.exec))},
		{"idle-rss-MiB", float64(old.rss) / (1 << 20), float64(nw.rss) / (1 << 20)},
	} {
		b.ReportMetric(m.old, "old-"+m.name)
		b.ReportMetric(m.new, "new-"+m.name)
		b.ReportMetric(m.new/m.old, "ratio-"+m.name)
	}
	for _, s := range sides {
		s.in.ok("vm", "rm", "-f", "ab")
	}
}

type abSide struct {
	name, bins       string
	in               *instance
	cold, warm, exec []time.Duration
	rss              int64
}

// timed runs the CLI and returns how long it took; a failure fails the
// benchmark.
func timed(in *instance, args ...string) time.Duration {
	t0 := time.Now()
	in.ok(args...)
	return time.Since(t0)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// daemonRSS is the resident memory of the instance's bangerd.
func daemonRSS(tb testing.TB, in *instance) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(in.daemonPID()), "status"))
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	tb.Fatal(fmt.Errorf("no VmRSS for bangerd"))
	return 0
}
