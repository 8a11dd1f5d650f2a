package imagepull

import (
	"banger/internal/testenv"
	"context"
	"testing"
	"time"
)

// BenchmarkPullStages reports where a cold pull spends its time, as
// seconds per pull for each stage (download overlaps flattening; the
// figure is until the first layer is ready to flatten).
func BenchmarkPullStages(b *testing.B) {
	testenv.RequireBinary(b, "debugfs", "apt-get install e2fsprogs")
	setupBenchImage(b)
	agent, _ := fakeAgent(b)
	totals := map[string]time.Duration{}
	for b.Loop() {
		b.StopTimer()
		p := newTestPuller(b)
		dir := b.TempDir()
		b.StartTimer()
		last, stage := time.Now(), ""
		_, err := p.Pull(context.Background(), Request{Ref: benchImage.ref, Dir: dir, Assets: GuestAgentAssets{VsockAgentBin: agent},
			Progress: func(pr Progress) {
				if pr.Stage != stage {
					now := time.Now()
					totals[stage] += now.Sub(last)
					last, stage = now, pr.Stage
				}
			}})
		if err != nil {
			b.Fatal(err)
		}
	}
	for _, s := range []string{StageDownload, StageFlatten, StageExt4, StageInject} {
		b.ReportMetric(totals[s].Seconds()/float64(b.N), s+"-s/op")
	}
}
