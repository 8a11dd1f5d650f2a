package integration

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestMountMeasurement reads a 10,000-file tree in a VM, whole (`find |
// xargs cat`), on a virtio-fs mount against the same tree copied onto
// the VM's own disk, alternating, in one run; an exec of `true` is the
// baseline taken off both. A measurement, not a check:
// BANGER_MOUNT_BENCH=1 (bench/mounts.sh).
func TestMountMeasurement(t *testing.T) {
	if os.Getenv("BANGER_MOUNT_BENCH") != "1" {
		t.Skip("a measurement: run bench/mounts.sh")
	}
	in := newInstance(t)
	vmFixtures(t, in)
	src := t.TempDir()
	fileTree(t, filepath.Join(src, "tree"), 10000)
	in.ok("vm", "create", "--name", "mb", "--image", "bb", "--kernel", "k", "--vcpu", "2", "--memory", "512M", "--disk-size", "256M",
		"--network", "none", "--vmm", "qemu", "-v", src+":/mnt/src")
	in.ok("vm", "exec", "mb", "--", "sh", "-c", "mkdir -p /root && cp -a /mnt/src/tree /root/tree && sync")
	timed := func(script string) time.Duration {
		start := time.Now()
		in.ok("vm", "exec", "mb", "--", "sh", "-c", script)
		return time.Since(start)
	}
	var base, fs, disk, fsFind, diskFind []time.Duration
	for i := 0; i < 5; i++ {
		base = append(base, timed("true"))
		fs = append(fs, timed("find /mnt/src/tree -type f | xargs cat > /dev/null"))
		disk = append(disk, timed("find /root/tree -type f | xargs cat > /dev/null"))
		fsFind = append(fsFind, timed("find /mnt/src/tree > /dev/null"))
		diskFind = append(diskFind, timed("find /root/tree > /dev/null"))
	}
	b := medianOf(base)
	f, d := medianOf(fs)-b, medianOf(disk)-b
	ff, df := medianOf(fsFind)-b, medianOf(diskFind)-b
	t.Logf("full read of 10,000 files: virtio-fs %s, VM disk %s (%.2f×); walk (find): virtio-fs %s, VM disk %s (%.2f×); exec baseline %s, taken off",
		f.Round(time.Millisecond), d.Round(time.Millisecond), float64(f)/float64(d),
		ff.Round(time.Millisecond), df.Round(time.Millisecond), float64(ff)/float64(df), b.Round(time.Millisecond))
	// Host write to guest-visible: a new file, polled from the guest.
	start := time.Now()
	os.WriteFile(filepath.Join(src, "new"), []byte("x"), 0o644)
	in.ok("vm", "exec", "mb", "--", "sh", "-c", "while [ ! -f /mnt/src/new ]; do :; done")
	t.Logf("host write to guest-visible (new file, one exec): %s (exec baseline %s)", time.Since(start).Round(time.Millisecond), b.Round(time.Millisecond))
	in.ok("vm", "rm", "-f", "mb")
}
