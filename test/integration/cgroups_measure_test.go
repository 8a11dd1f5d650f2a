package integration

import (
	"slices"
	"testing"
	"time"

	"banger/internal/cgroup"
	"banger/internal/testenv"
)

// BenchmarkCgroup times `vm run --rm -- true` with each VM in a
// cgroup of its own and without (bangerd with BANGER_CGROUPS=off), in
// one run, alternating so that both see the same host: the cost of the
// group's making, the VMM's start on a thread moved into it (cgroup
// v1) and its removal. Both warm-start from a template, as `vm run`
// does by default; the first run of each makes it and is not counted.
// It reports ratio (in cgroups / without, median of 15) and added-ms.
// The rounds are inside: -benchtime 1x (bench/cgroups.sh checks the
// goal).
func BenchmarkCgroup(b *testing.B) {
	report(b, measureCgroup(b))
}

func measureCgroup(t testing.TB) map[string]float64 {
	on := newInstance(t)
	testenv.RequireRoot(t)
	_, err := cgroup.Detect()
	testenv.Require(t, err == nil, "this host has no usable cgroups: "+errString(err))
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
	return map[string]float64{"ratio": float64(mOn) / float64(mOff), "added-ms": ms(mOn - mOff)}
}
