package vm

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"banger/internal/guestinit"
	"banger/internal/kernel"
	"banger/internal/testenv"
	"banger/internal/vsockagent"
)

// BenchmarkBoot boots the same kernel three ways in one run and reports,
// in seconds from the VMM's start, when each stage showed on the console:
//
//	bare:    a minimal initramfs whose /init only prints   (ready-s)
//	busybox: banger's init stage, then the image's command (init-s, ready-s)
//	systemd: banger's init stage, systemd, the agent       (init-s, image-init-s, ready-s)
//
// bench/boot.sh runs it and prints the ratios.
func BenchmarkBoot(b *testing.B) {
	k := importKernel(b)
	bare := filepath.Join(b.TempDir(), "bare.img")
	bareInit := filepath.Join(b.TempDir(), "bareinit")
	if err := goBuild(bareInit, "./test/vm/testdata/bareinit"); err != nil {
		b.Fatal(err)
	}
	if err := kernel.WriteMinimalInitramfs(bareInit, bare); err != nil {
		b.Fatal(err)
	}
	fi, _ := os.Stat(k.Initrd)
	b.Logf("kernel %s: %d modules, initramfs %d KiB, import took %s", k.Version, len(k.Modules), fi.Size()>>10, kernelTook.Round(time.Millisecond))

	run := func(b *testing.B, s vmSpec, marks map[string]string) {
		sums := map[string]time.Duration{}
		for b.Loop() {
			r := boot(b, s)
			if !r.exited {
				b.Fatalf("VM did not power off")
			}
			for metric, line := range marks {
				at, ok := r.first(line)
				if !ok {
					b.Fatalf("console never showed %q:\n%s", line, tail(r.text(), 20))
				}
				sums[metric] += at
			}
		}
		for metric := range marks {
			b.ReportMetric(sums[metric].Seconds()/float64(b.N), metric)
		}
	}
	b.Run("bare", func(b *testing.B) {
		run(b, vmSpec{vmlinux: k.Vmlinux, initrd: bare}, map[string]string{"ready-s": "BARE READY"})
	})
	b.Run("busybox", func(b *testing.B) {
		spec := vmSpec{vmlinux: k.Vmlinux, initrd: k.Initrd, root: busyboxImage(b),
			data:   dataDisk(b, &guestinit.RunSpec{Cmd: []string{"/bin/sh", "-c", "true"}, PowerOffOnExit: true}),
			append: "banger.root=/dev/vda banger.data=/dev/vdb banger.hostname=bb " + netArgs}
		run(b, spec, map[string]string{"init-s": "init stage started", "ready-s": "ready: running"})
	})
	b.Run("systemd", func(b *testing.B) {
		testenv.Fixture(b, testenv.DebianRoot, "a debootstrap'd Debian with systemd (scripts/vm-fixtures.sh)")
		spec := vmSpec{vmlinux: k.Vmlinux, initrd: k.Initrd, root: debianImage(b), data: dataDisk(b, nil),
			append: "banger.root=/dev/vda banger.data=/dev/vdb banger.hostname=deb " + netArgs}
		run(b, spec, map[string]string{"init-s": "init stage started", "image-init-s": "exec /sbin/init", "ready-s": vsockagent.ReadyLine})
	})
}
