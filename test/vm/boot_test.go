package vm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/guestinit"
	"banger/internal/vsockagent"
)

const netArgs = "banger.ip=10.0.2.15/24 banger.gw=10.0.2.2 banger.dns=10.0.2.3"

func TestBusyboxBootsAndKeepsWrites(t *testing.T) {
	k := importKernel(t)
	rootfs := busyboxImage(t)
	before := hashFile(t, rootfs)
	data := dataDisk(t, &guestinit.RunSpec{
		Entrypoint:     []string{"/bin/check.sh"},
		Env:            []string{"BOOT=1", "EXIT=0", "GREETING=hello"},
		WorkingDir:     "/tmp",
		PowerOffOnExit: true,
	})
	spec := vmSpec{vmlinux: k.Vmlinux, initrd: k.Initrd, root: rootfs, data: data,
		append: "banger.root=/dev/vda banger.data=/dev/vdb banger.hostname=bb " + netArgs}

	r := boot(t, spec)
	if !r.exited {
		t.Fatalf("first boot did not power off")
	}
	console := r.text()
	mods := " " + r.check("modules") + " "
	for _, m := range []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "overlay"} {
		if !strings.Contains(mods, " "+m+" ") {
			t.Errorf("module %s not loaded: %q", m, mods)
		}
	}
	// This VM has no virtio-vsock or virtio-fs device, so their drivers
	// (vsock's three, fuse and virtiofs) stay out.
	if strings.Contains(mods, " vsock ") || strings.Contains(mods, " virtiofs ") || !strings.Contains(console, "(5 skipped: no such device)") {
		t.Errorf("vsock or virtio-fs drivers loaded without such a device: %q", mods)
	}
	if root := r.check("root"); !strings.HasPrefix(root, "overlay / overlay rw") || !strings.Contains(root, "lowerdir=/run/banger/lower") {
		t.Errorf("root mount: %q", root)
	}
	if got := r.check("eth0"); !strings.Contains(got, "inet 10.0.2.15/24") {
		t.Errorf("eth0: %q", got)
	}
	if got := r.check("route"); !strings.Contains(got, "default via 10.0.2.2 dev eth0") {
		t.Errorf("route: %q", got)
	}
	if r.check("hostname") != "bb" || r.check("hosts") != "1" || r.check("resolv") != "nameserver 10.0.2.3" {
		t.Errorf("identity: hostname %q hosts %q resolv %q", r.check("hostname"), r.check("hosts"), r.check("resolv"))
	}
	if got := r.check("user"); got != "0 /tmp hello" {
		t.Errorf("run spec not applied: %q", got)
	}
	if r.check("marker") != "none" || r.check("rw") != "ok" {
		t.Errorf("first boot: marker %q rw %q", r.check("marker"), r.check("rw"))
	}
	if !strings.Contains(console, vsockagent.ReadyLine) {
		t.Errorf("the agent did not start beside the command:\n%s", tail(console, 20))
	}
	if !strings.Contains(console, "banger-init: ") || !strings.Contains(console, "command exited: status 0") {
		t.Errorf("init stage did not report the command's exit:\n%s", console)
	}

	// A reboot of the same VM keeps what it wrote; the image is untouched.
	r2 := boot(t, spec)
	if !r2.exited || r2.check("marker") != "boot 1" {
		t.Errorf("second boot: marker %q (want the first boot's write)\n%s", r2.check("marker"), r2.text())
	}
	if after := hashFile(t, rootfs); after != before {
		t.Errorf("image file changed by booting: %s → %s", before, after)
	}
}

func TestCommandRunsAsImageUser(t *testing.T) {
	k := importKernel(t)
	data := dataDisk(t, &guestinit.RunSpec{
		Cmd: []string{"/bin/check.sh"}, Env: []string{"EXIT=3"}, User: "user", WorkingDir: "/home/user", PowerOffOnExit: true,
	})
	r := boot(t, vmSpec{vmlinux: k.Vmlinux, initrd: k.Initrd, root: busyboxImage(t), data: data, append: "banger.root=/dev/vda banger.data=/dev/vdb"})
	if got := r.check("user"); got != "1000 /home/user" {
		t.Errorf("user/workdir: %q", got)
	}
	if !strings.Contains(r.text(), "command exited: status 3") {
		t.Errorf("exit status not reported:\n%s", r.text())
	}
}

func TestInitStageFailsWithOneLineAndPowersOff(t *testing.T) {
	k := importKernel(t)
	notExt4 := filepath.Join(t.TempDir(), "junk.img")
	os.WriteFile(notExt4, make([]byte, 8<<20), 0o644)
	for name, c := range map[string]struct {
		spec vmSpec
		want string
	}{
		"root disk will not mount": {vmSpec{root: notExt4, append: "banger.root=/dev/vda"}, "banger-init: FATAL: mounting image disk /dev/vda read-only"},
		"no root disk":             {vmSpec{append: "banger.root=/dev/vda"}, "banger-init: FATAL: /dev/vda did not appear"},
		"bad address":              {vmSpec{root: busyboxImage(t), append: "banger.root=/dev/vda banger.ip=nonsense"}, "banger-init: FATAL: banger.ip=\"nonsense\""},
	} {
		t.Run(name, func(t *testing.T) {
			c.spec.vmlinux, c.spec.initrd = k.Vmlinux, k.Initrd
			r := boot(t, c.spec)
			if !r.exited {
				t.Fatalf("VM did not power off")
			}
			if !strings.Contains(r.text(), c.want) {
				t.Errorf("console lacks %q:\n%s", c.want, tail(r.text(), 15))
			}
		})
	}
	t.Run("corrupt initramfs", func(t *testing.T) {
		b, _ := os.ReadFile(k.Initrd)
		bad := filepath.Join(t.TempDir(), "initrd.img")
		os.WriteFile(bad, b[:len(b)/3], 0o644)
		r := boot(t, vmSpec{vmlinux: k.Vmlinux, initrd: bad, root: busyboxImage(t), append: "banger.root=/dev/vda"})
		if !r.exited {
			t.Fatalf("VM did not stop")
		}
		if txt := r.text(); !strings.Contains(txt, "Initramfs unpacking failed") && !strings.Contains(txt, "Kernel panic") {
			t.Errorf("no sign of the corrupt initramfs:\n%s", tail(txt, 15))
		}
	})
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
