package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"banger/internal/testenv"
)

// TestMountMeasurement reads a 10,000-file tree in a VM, whole (`find |
// xargs cat`), on a virtio-fs mount and on a synced mount against the
// same tree copied onto the VM's own disk, alternating, in one run; an
// exec of `true` is the baseline taken off all. Then host write to
// guest-visible latency, virtio-fs against sync: read-virtiofs-ratio and
// read-sync-ratio (against the VM's disk), visible-virtiofs-ms and
// visible-sync-ms. The rounds are inside: -benchtime 1x
// (bench/mounts.sh checks the goals).
func BenchmarkMount(b *testing.B) {
	report(b, measureMount(b))
}

func measureMount(t testing.TB) map[string]float64 {
	in := newInstance(t)
	vmFixtures(t, in)
	src := t.TempDir()
	fileTree(t, filepath.Join(src, "tree"), 10000)
	in.ok("vm", "create", "--name", "mb", "--image", "bb", "--kernel", "k", "--vcpu", "2", "--memory", "512M", "--disk-size", "256M",
		"--network", "none", "--vmm", "qemu", "-v", src+":/mnt/src", "-v", src+":/mnt/sync:sync")
	in.ok("vm", "exec", "mb", "--", "sh", "-c", "mkdir -p /root && cp -a /mnt/src/tree /root/tree && sync")
	timed := func(script string) time.Duration { return in.timedExec("mb", script) }
	var base, fs, synced, disk, fsFind, diskFind []time.Duration
	for i := 0; i < 5; i++ {
		base = append(base, timed("true"))
		fs = append(fs, timed("find /mnt/src/tree -type f | xargs cat > /dev/null"))
		synced = append(synced, timed("find /mnt/sync/tree -type f | xargs cat > /dev/null"))
		disk = append(disk, timed("find /root/tree -type f | xargs cat > /dev/null"))
		fsFind = append(fsFind, timed("find /mnt/src/tree > /dev/null"))
		diskFind = append(diskFind, timed("find /root/tree > /dev/null"))
	}
	b := medianOf(base)
	f, d, sy := medianOf(fs)-b, medianOf(disk)-b, medianOf(synced)-b
	ff, df := medianOf(fsFind)-b, medianOf(diskFind)-b
	t.Logf("full read of 10,000 files: virtio-fs %s, synced copy %s, VM disk %s (%.2f×, %.2f×); walk (find): virtio-fs %s, VM disk %s (%.2f×); exec baseline %s, taken off",
		f.Round(time.Millisecond), sy.Round(time.Millisecond), d.Round(time.Millisecond), float64(f)/float64(d), float64(sy)/float64(d),
		ff.Round(time.Millisecond), df.Round(time.Millisecond), float64(ff)/float64(df), b.Round(time.Millisecond))
	// Host write to guest-visible: a new file, polled from the guest in
	// one exec (its baseline taken off), five times each way.
	visible := func(dir string, i int) time.Duration {
		name := fmt.Sprintf("new-%s-%d", filepath.Base(dir), i)
		start := time.Now()
		os.WriteFile(filepath.Join(src, name), []byte("x"), 0o644)
		in.ok("vm", "exec", "mb", "--", "sh", "-c", "while [ ! -f "+dir+"/"+name+" ]; do :; done")
		return time.Since(start) - b
	}
	var lf, ls []time.Duration
	for i := 0; i < 5; i++ {
		lf = append(lf, visible("/mnt/src", i))
		ls = append(ls, visible("/mnt/sync", i))
	}
	t.Logf("host write to guest-visible (new file): virtio-fs %s, sync %s (%.2f×); exec baseline %s, taken off",
		medianOf(lf).Round(time.Millisecond), medianOf(ls).Round(time.Millisecond), float64(medianOf(ls))/float64(medianOf(lf)), b.Round(time.Millisecond))
	in.ok("vm", "rm", "-f", "mb")
	return map[string]float64{"read-virtiofs-ratio": float64(f) / float64(d), "read-sync-ratio": float64(sy) / float64(d),
		"visible-virtiofs-ms": ms(medianOf(lf)), "visible-sync-ms": ms(medianOf(ls))}
}

// TestMountGitMeasurement runs `git status` in a 10,000-file repository
// inside a VM: on a virtio-fs mount, on a synced mount and on a copy on
// the VM's own disk, alternating, in one run: git-virtiofs-ratio and
// git-sync-ratio (against the VM's disk). The rounds are inside:
// -benchtime 1x (bench/mounts.sh checks the goals).
func BenchmarkMountGit(b *testing.B) {
	report(b, measureMountGit(b))
}

func measureMountGit(t testing.TB) map[string]float64 {
	testenv.RequireBinary(t, "git", "apt-get install git")
	in := newInstance(t)
	vmFixtures(t, in)
	debianImage(t, in)
	repo := t.TempDir()
	fileTree(t, repo, 10000)
	for _, args := range [][]string{{"init", "-q"}, {"add", "."}, {"-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "tree"}} {
		if out, err := exec.Command("git", append([]string{"-C", repo}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	in.ok("vm", "create", "--name", "mg", "--image", "deb", "--kernel", "k", "--vcpu", "2", "--memory", "768M", "--disk-size", "1G",
		"--network", "none", "--vmm", "qemu", "-v", repo+":/mnt/fs", "-v", repo+":/mnt/sync:sync")
	in.ok("vm", "exec", "mg", "--", "sh", "-c", "git config --global --add safe.directory '*' && cp -a /mnt/fs /root/disk && sync")
	timed := func(script string) time.Duration { return in.timedExec("mg", script) }
	var base, fs, synced, disk []time.Duration
	for i := 0; i < 5; i++ {
		base = append(base, timed("true"))
		fs = append(fs, timed("git -C /mnt/fs status --porcelain > /dev/null"))
		synced = append(synced, timed("git -C /mnt/sync status --porcelain > /dev/null"))
		disk = append(disk, timed("git -C /root/disk status --porcelain > /dev/null"))
	}
	b := medianOf(base)
	f, sy, d := medianOf(fs)-b, medianOf(synced)-b, medianOf(disk)-b
	t.Logf("git status, 10,000 files: virtio-fs %s, synced copy %s, VM disk %s (%.2f×, %.2f×); exec baseline %s, taken off",
		f.Round(time.Millisecond), sy.Round(time.Millisecond), d.Round(time.Millisecond), float64(f)/float64(d), float64(sy)/float64(d), b.Round(time.Millisecond))
	in.ok("vm", "rm", "-f", "mg")
	return map[string]float64{"git-virtiofs-ratio": float64(f) / float64(d), "git-sync-ratio": float64(sy) / float64(d)}
}

// timedExec is how long `vm exec VM -- sh -c SCRIPT` takes.
func (in *instance) timedExec(vm, script string) time.Duration {
	start := time.Now()
	in.ok("vm", "exec", vm, "--", "sh", "-c", script)
	return time.Since(start)
}
