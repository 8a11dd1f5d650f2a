package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkE2B sets the E2B endpoint, driven by the real SDK,
// against banger's own CLI on the same host in the same run: time to
// interactive (Sandbox.create until the first commands.run('true')
// returns) 20 times in a row and as a burst of 10 at once, against
// `banger vm run --rm -- true` the same way; and a command's round trip
// through envd against `banger vm exec`. A measurement, not a check:
// bench/e2b.sh.
func BenchmarkE2B(b *testing.B) {
	report(b, measureE2B(b))
}

func measureE2B(t testing.TB) map[string]float64 {
	e := newE2BInstance(t, "")
	e.setup(t)
	const rounds, burst = 20, 10
	image := envOr("TEMPLATE", "bb")

	// The SDK first: its own warm-up makes the warm template both use.
	dir := e2bDir(t)
	cmd := exec.Command("node", "measure.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "E2B_API_KEY="+e.key, "E2B_API_URL="+e.url, "E2B_SANDBOX_URL="+e.url, "TEMPLATE="+image,
		fmt.Sprint("ROUNDS=", rounds), fmt.Sprint("BURST=", burst))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node measure.mjs: %v", err)
	}
	var sdk struct{ TTI, TTIKill, Burst, RTT []float64 }
	if err := json.Unmarshal(out[strings.LastIndexByte(strings.TrimSpace(string(out)), '\n')+1:], &sdk); err != nil {
		t.Fatalf("measure.mjs said %q: %v", out, err)
	}

	run := func() float64 {
		t0 := time.Now()
		e.ok("vm", "run", "--rm", "--image", image, "--", "true")
		return float64(time.Since(t0).Microseconds()) / 1000
	}
	var cli, cliBurst, exec_ []float64
	for range rounds {
		cli = append(cli, run())
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := run()
			mu.Lock()
			cliBurst = append(cliBurst, d)
			mu.Unlock()
		}()
	}
	wg.Wait()
	e.ok("vm", "create", "--name", "rtt", "--image", image)
	for range 20 {
		t0 := time.Now()
		e.ok("vm", "exec", "rtt", "--", "true")
		exec_ = append(exec_, float64(time.Since(t0).Microseconds())/1000)
	}
	e.ok("vm", "rm", "-f", "rtt")

	row := func(what string, xs []float64, base []float64) {
		m, b := pct(xs, 50), pct(base, 50)
		t.Logf("%-44s n=%-3d median %8.1f ms  p95 %8.1f  p99 %8.1f   (baseline median %8.1f, ratio %.2f)",
			what, len(xs), m, pct(xs, 95), pct(xs, 99), b, m/b)
	}
	t.Logf("image %s, 1 vCPU, 512 MiB, QEMU (%s)", image, loadNote())
	row("SDK time to interactive, in a row", sdk.TTI, cli)
	row("SDK time to interactive + kill, in a row", sdk.TTIKill, cli)
	row("SDK time to interactive, burst of 10", sdk.Burst, cliBurst)
	row("banger vm run --rm -- true, in a row", cli, cli)
	row("banger vm run --rm -- true, burst of 10", cliBurst, cliBurst)
	row("SDK commands.run('true') round trip", sdk.RTT, exec_)
	row("banger vm exec VM -- true", exec_, exec_)
	return map[string]float64{
		"tti-ratio":       pct(sdk.TTI, 50) / pct(cli, 50),
		"tti-burst-ratio": pct(sdk.Burst, 50) / pct(cliBurst, 50),
		"rtt-ratio":       pct(sdk.RTT, 50) / pct(exec_, 50),
		"tti-ms":          pct(sdk.TTI, 50),
		"tti-p95-ms":      pct(sdk.TTI, 95),
		"tti-p99-ms":      pct(sdk.TTI, 99),
		"tti-burst-ms":    pct(sdk.Burst, 50),
		"run-ms":          pct(cli, 50),
		"run-burst-ms":    pct(cliBurst, 50),
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// pct is the p-th percentile of xs (nearest rank).
func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64{}, xs...)
	sort.Float64s(s)
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func loadNote() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "load unknown"
	}
	return "load " + strings.Join(f[:3], " ")
}
