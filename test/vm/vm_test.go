// Package vm boots real VMs: QEMU's microvm machine (KVM when it really
// works, software emulation otherwise) with a Debian cloud kernel that
// banger imports from its .deb, and images that banger pulls from a
// registry on loopback. It checks, on the serial console, what the init
// stage promises. It needs qemu-system-x86_64 and two packages that
// .ci/run downloads: BANGER_TEST_KERNEL_DEB and BANGER_TEST_BUSYBOX_DEB.
package vm

import (
	"banger/internal/testenv"
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/guestinit"
	"banger/internal/imagepull"
	"banger/internal/imagepull/imagetest"
	"banger/internal/kernel"
	"banger/internal/system"
	"banger/internal/vmm/qemu"
)

var (
	agentBin string // built for this run
	repoRoot string
)

func TestMain(m *testing.M) {
	_, file, _, _ := runtime.Caller(0)
	repoRoot = filepath.Join(filepath.Dir(file), "..", "..")
	dir, err := os.MkdirTemp("", "banger-vm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "banger-vsock-agent")
	if err := goBuild(agentBin, "./cmd/banger-vsock-agent"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if shared != "" {
		os.RemoveAll(shared)
	}
	os.Exit(code)
}

func goBuild(out, pkg string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// The kernel and the busybox image are built once per run.
var (
	kernelOnce sync.Once
	testKernel *kernel.Built
	kernelErr  error
	kernelTook time.Duration
	bbOnce     sync.Once
	bbRootfs   string
	bbErr      error
	shared     string
)

func sharedDir(t testing.TB) string {
	if shared == "" {
		d, err := os.MkdirTemp("", "banger-vm-shared-")
		if err != nil {
			t.Fatal(err)
		}
		shared = d
	}
	return shared
}

func importKernel(t testing.TB) *kernel.Built {
	t.Helper()
	deb := testenv.KernelPackage(t)
	kernelOnce.Do(func() {
		dir := filepath.Join(sharedDir(t), "kernel")
		os.MkdirAll(dir, 0o755)
		start := time.Now()
		testKernel, kernelErr = kernel.Import(deb, dir, agentBin)
		kernelTook = time.Since(start)
	})
	if kernelErr != nil {
		t.Fatalf("importing kernel: %v", kernelErr)
	}
	return testKernel
}

// checkScript is the busybox image's command: it reports on the console
// what the init stage set up, then leaves a mark on the writable disk.
const checkScript = `#!/bin/sh
echo "CHECK modules: $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
echo "CHECK root: $(grep ' / ' /proc/mounts)"
echo "CHECK eth0: $(ip -4 addr show eth0 | grep inet)"
echo "CHECK route: $(ip route show default)"
echo "CHECK hostname: $(hostname)"
echo "CHECK hosts: $(grep -c "$(hostname)" /etc/hosts)"
echo "CHECK resolv: $(cat /etc/resolv.conf)"
echo "CHECK user: $(id -u) $PWD $GREETING"
if [ -f /root/marker ]; then echo "CHECK marker: $(cat /root/marker)"; else echo "CHECK marker: none"; fi
echo "boot $BOOT" > /root/marker
touch /rwtest && echo "CHECK rw: ok"
sync
exit $EXIT
`

// busyboxImage pulls a busybox image through banger's own pipeline from a
// registry on loopback and returns its ext4.
func busyboxImage(t testing.TB) string {
	t.Helper()
	deb := testenv.Fixture(t, testenv.BusyboxDeb, "the busybox-static .deb (scripts/vm-fixtures.sh)")
	bbOnce.Do(func() {
		bbRootfs, bbErr = buildBusyboxImage(t, deb)
	})
	if bbErr != nil {
		t.Fatalf("building busybox image: %v", bbErr)
	}
	return bbRootfs
}

func buildBusyboxImage(t testing.TB, deb string) (string, error) {
	x := filepath.Join(sharedDir(t), "busybox-deb")
	if out, err := exec.Command("dpkg-deb", "-x", deb, x).CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg-deb -x: %v %s", err, out)
	}
	bb, err := os.ReadFile(filepath.Join(x, "bin", "busybox"))
	if err != nil {
		return "", err
	}
	ents := []imagetest.Entry{
		{Name: "bin/busybox", Body: string(bb), Mode: 0o755},
		{Name: "bin/check.sh", Body: checkScript, Mode: 0o755},
		{Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"},
		{Name: "etc/group", Body: "root:x:0:\nuser:x:1000:\n"},
		{Name: "root/", Type: '5', Mode: 0o700},
		{Name: "home/user/", Type: '5', Mode: 0o755, UID: 1000, GID: 1000},
		{Name: "tmp/", Type: '5', Mode: 0o1777},
	}
	for _, a := range []string{"sh", "ls", "cat", "mount", "ip", "hostname", "grep", "cut", "sort", "tr", "sync", "touch", "id", "sleep", "poweroff"} {
		ents = append(ents, imagetest.Entry{Name: "bin/" + a, Type: '2', Link: "busybox"})
	}
	reg := imagetest.StartRegistry(t)
	ref := reg.Push(t, "test/busybox:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{imagetest.Layer(t, ents...)}}))
	return pullImage(t, ref, "busybox")
}

func pullImage(t testing.TB, ref, name string) (string, error) {
	p, err := imagepull.New(filepath.Join(sharedDir(t), "blobs"), system.Runner{})
	if err != nil {
		return "", err
	}
	dir := filepath.Join(sharedDir(t), "image-"+name)
	os.MkdirAll(dir, 0o755)
	res, err := p.Pull(context.Background(), imagepull.Request{Ref: ref, Dir: dir, Assets: imagepull.GuestAgentAssets{VsockAgentBin: agentBin}})
	if err != nil {
		return "", err
	}
	return res.Rootfs, nil
}

// dataDisk makes a VM's writable disk, formatted on the host, with the
// run spec the init stage reads.
func dataDisk(t testing.TB, spec *guestinit.RunSpec) string {
	t.Helper()
	seed := t.TempDir()
	if spec != nil {
		b, _ := json.Marshal(spec)
		os.MkdirAll(filepath.Join(seed, filepath.Dir(guestinit.RunSpecPath)), 0o755)
		os.WriteFile(filepath.Join(seed, guestinit.RunSpecPath), b, 0o644)
	}
	disk := filepath.Join(t.TempDir(), "data.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", seed, disk, "256M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	return disk
}

// vmSpec is one boot.
type vmSpec struct {
	vmlinux, initrd string
	root, data      string
	append          string
	memMiB          int
	timeout         time.Duration
}

// consoleLine is one line of the serial console, with when it arrived.
type consoleLine struct {
	at   time.Duration
	text string
}

type bootResult struct {
	lines  []consoleLine
	exited bool // the VM powered itself off
	total  time.Duration
}

func (r bootResult) text() string {
	var b strings.Builder
	for _, l := range r.lines {
		b.WriteString(l.text + "\n")
	}
	return b.String()
}

// first returns when the first line containing s arrived.
func (r bootResult) first(s string) (time.Duration, bool) {
	for _, l := range r.lines {
		if strings.Contains(l.text, s) {
			return l.at, true
		}
	}
	return 0, false
}

// check returns the value of a "CHECK key: value" line.
func (r bootResult) check(key string) string {
	for _, l := range r.lines {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l.text), "CHECK "+key+": "); ok {
			return v
		}
	}
	return "(missing)"
}

// boot runs one VM to completion (it must power itself off) and returns
// its console, line by line, timed from the VMM's start.
func boot(t testing.TB, s vmSpec) bootResult {
	t.Helper()
	requireQEMU(t)
	if s.memMiB == 0 {
		s.memMiB = 512
	}
	if s.timeout == 0 {
		s.timeout = 3 * time.Minute
	}
	cmdline := "console=ttyS0 panic=-1 reboot=t"
	if k := qemu.Probe().TSCkHz; k > 0 {
		// Without it, guests hang calibrating the TSC under emulation.
		cmdline += " tsc_early_khz=" + strconv.Itoa(k)
	}
	cmdline += " " + s.append
	args := []string{
		"-M", "microvm,x-option-roms=off,rtc=on", "-accel", "tcg,thread=multi", "-cpu", "max",
		"-m", strconv.Itoa(s.memMiB), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot",
		"-serial", "stdio",
		"-kernel", s.vmlinux, "-append", strings.TrimSpace(cmdline),
	}
	if s.initrd != "" {
		args = append(args, "-initrd", s.initrd)
	}
	if s.root != "" {
		// Shared read-only by every VM: snapshot=on would also do.
		args = append(args, "-drive", "id=root,file="+s.root+",format=raw,if=none,readonly=on", "-device", "virtio-blk-device,drive=root")
	}
	if s.data != "" {
		args = append(args, "-drive", "id=data,file="+s.data+",format=raw,if=none", "-device", "virtio-blk-device,drive=data")
	}
	// The agent channel of the QEMU backend: a virtio-serial port.
	args = append(args, "-device", "virtio-serial-device")
	// User networking restricted to the guest and QEMU itself: no
	// traffic leaves the machine.
	args = append(args, "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-device,netdev=n0")

	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting qemu: %v", err)
	}
	var res bootResult
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		res.lines = append(res.lines, consoleLine{time.Since(start), strings.TrimRight(sc.Text(), "\r")})
	}
	err := cmd.Wait()
	res.total = time.Since(start)
	res.exited = ctx.Err() == nil && err == nil
	if ctx.Err() != nil {
		t.Logf("VM did not power off within %s; console:\n%s", s.timeout, res.text())
	}
	return res
}

func hashFile(t testing.TB, p string) string {
	t.Helper()
	h, err := kernel.HashFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func requireQEMU(tb testing.TB) {
	tb.Helper()
	testenv.RequireBinary(tb, "qemu-system-x86_64", "apt-get install qemu-system-x86")
}
