package integration

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkCOW takes the two measurements of copy-on-write restores,
// for two builds of banger in one run, each round measuring both in
// turn (BANGER_AB="OLD_BIN_DIR NEW_BIN_DIR", as bench/cow.sh sets it;
// unset, this build alone):
//
//   - memory: a 1 GiB VM holding 256 MiB of random data in a tmpfs is
//     snapshotted and forked five times (`vm fork -n 5`); what the forks
//     add to the host's Shmem plus AnonPages (/proc/meminfo, before and
//     after) is set against five copies of the snapshot's memory file
//     (its bytes on disk). Cached is reported beside it: the snapshot's
//     file pages, which restored VMs map.
//   - fan-out: eight warm `vm run --rm -- true` started at once against
//     the same eight one after another, and `vm fork -n 8` against eight
//     `vm fork` one after another.
//
// /proc/meminfo is the host's: other work on the machine shows in it,
// so the memory figures want a quiet host. The fan-out is CPU-bound
// under emulation (a warm run costs about 0.5 CPU-seconds, most of it
// the restored guest under TCG): at best the eight take a core each in
// turn, and CPU others take on the host shows in the ratio; the load
// average over the run is reported beside it.
func BenchmarkCOW(b *testing.B) {
	var sides []*cowSide
	if dirs := strings.Fields(os.Getenv("BANGER_AB")); len(dirs) == 2 {
		sides = []*cowSide{{name: "old", bins: dirs[0]}, {name: "new", bins: dirs[1]}}
	} else {
		sides = []*cowSide{{name: "new", bins: binDir}}
	}
	run := []string{"--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--network", "none"}
	for _, s := range sides {
		s.in = newInstanceWith(b, s.bins)
		vmFixtures(b, s.in)
		s.in.ok(append(append([]string{"vm", "run", "--rm"}, run...), "--", "true")...) // the warm template
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, s := range sides {
			in := s.in
			// Memory: five forks of a 1 GiB VM holding 256 MiB.
			in.ok("vm", "create", "--name", "big", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "1G", "--disk-size", "128M", "--vmm", "qemu", "--network", "none", "--cold")
			in.ok("vm", "exec", "big", "--", "sh", "-c", "mkdir -p /t && mount -t tmpfs -o size=300m tmpfs /t && dd if=/dev/urandom of=/t/f bs=1M count=256 2>/dev/null && sync")
			var sn snapshotJSON
			in.jsonOut(&sn, "vm", "snapshot", "big", "--name", "big-snap", "--json")
			var memFile int64
			for _, f := range sn.Files {
				if f.Role == "memory" {
					memFile = f.DiskBytes
				}
			}
			exec.Command("sync").Run()
			time.Sleep(2 * time.Second)
			before := meminfo(b)
			in.ok("vm", "fork", "big-snap", "--name", "c", "-n", "5")
			time.Sleep(3 * time.Second) // the forks settle
			after := meminfo(b)
			added := after["Shmem"] + after["AnonPages"] - before["Shmem"] - before["AnonPages"]
			s.memRatio = append(s.memRatio, float64(added)/float64(5*memFile))
			s.memAdded = append(s.memAdded, added)
			s.memFile = memFile
			s.cached = append(s.cached, after["Cached"]-after["Shmem"]-before["Cached"]+before["Shmem"])
			in.ok("vm", "rm", "-f", "big", "c-1", "c-2", "c-3", "c-4", "c-5")
			in.ok("snapshot", "rm", "big-snap")

			// Fan-out: eight warm runs, one after another, then at once.
			runTrue := append(append([]string{"vm", "run", "--rm"}, run...), "--", "true")
			t0 := time.Now()
			for j := 0; j < 8; j++ {
				in.ok(runTrue...)
			}
			seq := time.Since(t0)
			t0 = time.Now()
			parallel(b, 8, func(int) { in.ok(runTrue...) })
			s.runRatio = append(s.runRatio, float64(time.Since(t0))/float64(seq))
			s.runSeq = append(s.runSeq, seq)
			s.runPar = append(s.runPar, time.Since(t0))

			// Eight forks, one after another, then `fork -n 8`. Each of the
			// eight is removed (untimed) before the next: idle guests burn
			// CPU under emulation, and the side by side forks start with
			// none running either.
			in.ok(append([]string{"vm", "create", "--name", "fsrc"}, run...)...)
			in.ok("vm", "snapshot", "fsrc", "--name", "fsnap")
			seq = 0
			for j := 1; j <= 8; j++ {
				t0 = time.Now()
				in.ok("vm", "fork", "fsnap", "--name", "s"+strconv.Itoa(j))
				seq += time.Since(t0)
				in.ok("vm", "rm", "-f", "s"+strconv.Itoa(j))
			}
			t0 = time.Now()
			in.ok("vm", "fork", "fsnap", "--name", "p", "-n", "8")
			s.forkRatio = append(s.forkRatio, float64(time.Since(t0))/float64(seq))
			s.forkSeq = append(s.forkSeq, seq)
			s.forkPar = append(s.forkPar, time.Since(t0))
			rm := []string{"vm", "rm", "-f", "fsrc"}
			for j := 1; j <= 8; j++ {
				rm = append(rm, "p-"+strconv.Itoa(j))
			}
			in.ok(rm...)
			in.ok("snapshot", "rm", "fsnap")
		}
	}
	b.StopTimer()
	b.ReportMetric(loadavg(), "loadavg-1m")
	for _, s := range sides {
		b.ReportMetric(medianF(s.memRatio), s.name+"-fork5-mem-ratio")
		b.ReportMetric(mibF(medianI(s.memAdded)), s.name+"-fork5-added-MiB")
		b.ReportMetric(mibF(s.memFile), s.name+"-memfile-MiB")
		b.ReportMetric(mibF(medianI(s.cached)), s.name+"-fork5-filecache-MiB")
		b.ReportMetric(medianF(s.runRatio), s.name+"-run8-ratio")
		b.ReportMetric(ms(median(s.runSeq)), s.name+"-run8-seq-ms")
		b.ReportMetric(ms(median(s.runPar)), s.name+"-run8-par-ms")
		b.ReportMetric(medianF(s.forkRatio), s.name+"-fork8-ratio")
		b.ReportMetric(ms(median(s.forkSeq)), s.name+"-fork8-seq-ms")
		b.ReportMetric(ms(median(s.forkPar)), s.name+"-fork8-par-ms")
	}
}

type cowSide struct {
	name, bins                       string
	in                               *instance
	memRatio, runRatio, forkRatio    []float64
	memAdded, cached                 []int64
	memFile                          int64
	runSeq, runPar, forkSeq, forkPar []time.Duration
}

// parallel runs f(0..n-1) at once and waits for all.
func parallel(tb testing.TB, n int, f func(int)) {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			f(i)
		}(i)
	}
	wg.Wait()
}

// meminfo is /proc/meminfo in bytes.
func meminfo(tb testing.TB) map[string]int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]int64{}
	for _, l := range bytes.Split(b, []byte("\n")) {
		k, v, ok := strings.Cut(string(l), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		out[k] = n << 10
	}
	return out
}

func medianF(v []float64) float64 {
	s := append([]float64{}, v...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

func medianI(v []int64) int64 {
	f := make([]float64, len(v))
	for i, x := range v {
		f[i] = float64(x)
	}
	return int64(medianF(f))
}

func mibF(n int64) float64 { return float64(n) / (1 << 20) }

// loadavg is the host's load average over the last minute.
func loadavg() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
