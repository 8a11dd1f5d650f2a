package integration

import (
	"os"
	"slices"
	"testing"
	"time"
)

// TestCgroupMeasurement times `vm run --rm -- true` with each VM in a
// cgroup of its own and without (bangerd with BANGER_CGROUPS=off), in
// one run, alternating so that both see the same host: the cost of the
// group's making, the VMM's start on a thread moved into it (cgroup
// v1) and its removal. Both warm-start from a template, as `vm run`
// does by default; the first run of each makes it and is not counted.
// A measurement, not a check: BANGER_CGROUP_BENCH=1 (bench/cgroups.sh).
func TestCgroupMeasurement(t *testing.T) {
	if os.Getenv("BANGER_CGROUP_BENCH") != "1" {
		t.Skip("a measurement: run bench/cgroups.sh")
	}
	on := newInstance(t)
	cgroupsOf(t, on) // root, and a host with cgroups
	off := newInstance(t)
	off.env = append(off.env, "BANGER_CGROUPS=off")
	vmFixtures(t, on)
	vmFixtures(t, off)
	run := []string{"vm", "run", "--rm", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--network", "none", "--vmm", "qemu", "--", "true"}
	on.ok(run...)
	off.ok(run...)
	const rounds = 15
	var withGroups, without []time.Duration
	for range rounds {
		for _, c := range []struct {
			in  *instance
			out *[]time.Duration
		}{{on, &withGroups}, {off, &without}} {
			start := time.Now()
			c.in.ok(run...)
			*c.out = append(*c.out, time.Since(start))
		}
	}
	med := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2] }
	mOn, mOff := med(withGroups), med(without)
	t.Logf("vm run --rm -- true, median of %d (warm start): in cgroups %s, without %s: ratio %.3f (%+.0f ms)",
		rounds, mOn.Round(time.Millisecond), mOff.Round(time.Millisecond), float64(mOn)/float64(mOff), float64(mOn-mOff)/float64(time.Millisecond))
	t.Logf("all, in cgroups: %v; without: %v", withGroups, without)

}
