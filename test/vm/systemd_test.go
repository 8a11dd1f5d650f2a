package vm

import (
	"banger/internal/testenv"
	"bytes"
	"compress/gzip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/imagepull/imagetest"
)

// checkUnit runs once the system is up: it reports the seed units'
// state on the console and powers the VM off.
const checkUnit = `[Unit]
Description=banger test check
After=multi-user.target banger-network.service banger-vsock-agent.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "CHECK units: $(systemctl is-active banger-network.service banger-vsock-agent.service | tr "\\n" " ")" >/dev/console; echo "CHECK target: $(systemctl is-active multi-user.target)" >/dev/console; echo "CHECK hostname: $(cat /proc/sys/kernel/hostname)" >/dev/console; systemctl --no-block poweroff'

[Install]
WantedBy=multi-user.target
`

var (
	debOnce   sync.Once
	debRootfs string
	debErr    error
)

// debianImage pulls a Debian image with systemd, made by debootstrap
// ($BANGER_TEST_DEBIAN_ROOT is its directory), through banger's pipeline.
func debianImage(t testing.TB) string {
	t.Helper()
	dir := testenv.Fixture(t, testenv.DebianRoot, "a debootstrap --variant=minbase --include=systemd,systemd-sysv directory (scripts/vm-fixtures.sh)")
	debOnce.Do(func() {
		start := time.Now()
		defer func() { t.Logf("Debian image built and pulled in %s", time.Since(start).Round(time.Millisecond)) }()
		var raw bytes.Buffer
		cmd := exec.Command("tar", "--numeric-owner", "--xattrs", "-C", dir, "-cf", "-", ".")
		cmd.Stdout = &raw
		if err := cmd.Run(); err != nil {
			debErr = err
			return
		}
		reg := imagetest.StartRegistry(t)
		check := imagetest.Layer(t,
			imagetest.Entry{Name: "etc/systemd/system/banger-check.service", Body: checkUnit},
			imagetest.Entry{Name: "etc/systemd/system/multi-user.target.wants/banger-check.service", Type: '2', Link: "/etc/systemd/system/banger-check.service"},
		)
		ref := reg.Push(t, "test/debian:bookworm", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{raw.Bytes(), check}, GzipLevel: gzip.BestSpeed}))
		debRootfs, debErr = pullImage(t, ref, "debian")
	})
	if debErr != nil {
		t.Fatalf("building the Debian image: %v", debErr)
	}
	return debRootfs
}

func TestSystemdImageReachesMultiUser(t *testing.T) {
	k := importKernel(t)
	rootfs := debianImage(t)
	if _, err := os.Stat(rootfs); err != nil {
		t.Fatal(err)
	}
	r := boot(t, vmSpec{vmlinux: k.Vmlinux, initrd: k.Initrd, root: rootfs, data: dataDisk(t, nil),
		append: "banger.root=/dev/vda banger.data=/dev/vdb banger.hostname=deb " + netArgs})
	if !r.exited {
		t.Fatalf("VM did not power off")
	}
	t.Logf("systemd boot: %s until power-off", r.total.Round(time.Millisecond))
	if os.Getenv("BANGER_TEST_SHOW_CONSOLE") != "" {
		for _, l := range r.lines {
			t.Logf("%7.3f %s", l.at.Seconds(), l.text)
		}
	}
	txt := r.text()
	if !strings.Contains(txt, "banger-init: ") || !strings.Contains(txt, "exec /sbin/init") {
		t.Errorf("init stage did not hand over to systemd:\n%s", tail(txt, 30))
	}
	if got := r.check("units"); got != "active active" {
		t.Errorf("seed units: %q, want both active\n%s", got, tail(txt, 40))
	}
	if r.check("target") != "active" || r.check("hostname") != "deb" {
		t.Errorf("target %q hostname %q", r.check("target"), r.check("hostname"))
	}
	if !strings.Contains(txt, "banger-vsock-agent: ready") {
		t.Errorf("agent service never said ready")
	}
}
