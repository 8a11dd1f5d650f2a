package firecracker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/hostnet"
	"banger/internal/kernel"
	"banger/internal/testenv"
	"banger/internal/vmm"
)

// requireFirecracker skips, saying why, unless a real firecracker binary
// and /dev/kvm are here. The guest does not have to boot (it cannot
// under PVM-only KVM): the API, the process and snapshots are real.
func requireFirecracker(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("firecracker")
	if err != nil {
		testenv.SkipExpected(t, "firecracker", "no firecracker binary on PATH: these tests drive a real Firecracker when one is installed")
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		testenv.SkipExpected(t, "firecracker", "no /dev/kvm: Firecracker needs KVM")
	}
	return bin
}

// testKernel imports the test kernel once per run: under the race
// detector an import takes most of a minute.
var testKernel = struct {
	sync.Once
	k   *kernel.Built
	dir string
	err error
}{}

func testSpec(t *testing.T) vmm.Spec {
	t.Helper()
	deb := testenv.KernelPackage(t)
	testKernel.Do(func() {
		testKernel.dir, _ = os.MkdirTemp("", "fck")
		agent := filepath.Join(testKernel.dir, "agent")
		os.WriteFile(agent, []byte("agent"), 0o755)
		os.Mkdir(filepath.Join(testKernel.dir, "k"), 0o755)
		testKernel.k, testKernel.err = kernel.Import(deb, filepath.Join(testKernel.dir, "k"), agent)
	})
	if testKernel.err != nil {
		t.Fatal(testKernel.err)
	}
	k := testKernel.k
	disk := filepath.Join(t.TempDir(), "disk.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", disk, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	dir, _ := os.MkdirTemp("", "fcvm") // short: socket paths
	t.Cleanup(func() { os.RemoveAll(dir) })
	return vmm.Spec{ID: "test-vm", Dir: dir, VCPUs: 1, MemoryMiB: 128, Kernel: k.Vmlinux, Initrd: k.Initrd,
		Cmdline: "console=ttyS0 panic=-1", Drives: []vmm.Drive{{ID: "root", Path: disk, ReadOnly: true}}}
}

func TestFirecrackerLifecycle(t *testing.T) {
	bin := requireFirecracker(t)
	spec := testSpec(t)
	b, err := New(bin)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	start := time.Now()
	m, err := b.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("configured and started in %s (pid %d)", time.Since(start).Round(time.Millisecond), m.PID())
	defer m.Kill()

	info, err := m.Client().InstanceInfo(ctx)
	if err != nil || info.State != "Running" || info.AppName != "Firecracker" {
		t.Fatalf("instance = %+v, %v", info, err)
	}
	cfg, err := m.Client().VMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if mc, _ := cfg["machine-config"].(map[string]any); mc["mem_size_mib"] != float64(128) {
		t.Errorf("vm config = %v", cfg["machine-config"])
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if info, _ := m.Client().InstanceInfo(ctx); info.State != "Paused" {
		t.Errorf("after pause: %s", info.State)
	}
	state, mem := filepath.Join(spec.Dir, "vm.state"), filepath.Join(spec.Dir, "vm.mem")
	if err := m.CreateSnapshot(ctx, state, mem); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(mem); err != nil || fi.Size() != 128<<20 {
		t.Errorf("memory file: %v %v", fi, err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}

	// Stop: the guest cannot act on Ctrl-Alt-Del here, so Stop kills at
	// the deadline and the process is gone.
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := m.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctx); err != nil {
		t.Fatal(err)
	}

	// A new Firecracker starts from the snapshot in the VM's directory
	// (the snapshot names its sockets there) and runs.
	rs := spec
	rs.ID = "restored"
	rm, err := b.Restore(ctx, rs, vmm.Snapshot{State: state, Memory: mem})
	if err != nil {
		t.Fatal(err)
	}
	r := rm.(*Machine)
	defer r.Kill()
	if info, err := r.Client().InstanceInfo(ctx); err != nil || info.State != "Running" {
		t.Errorf("restored = %+v, %v", info, err)
	}
	r.Kill()
	r.Wait(ctx)
}

func TestFirecrackerStartFailsCleanly(t *testing.T) {
	bin := requireFirecracker(t)
	spec := testSpec(t)
	spec.Kernel = "/nonexistent/vmlinux"
	b, _ := New(bin)
	_, err := b.Start(context.Background(), spec)
	if err == nil {
		t.Fatal("started with a missing kernel")
	}
	t.Log(err)
	if _, serr := os.Stat(filepath.Join(spec.Dir, APISocket)); serr == nil {
		// The socket file may stay, but no process may answer on it.
		if _, derr := NewClient(filepath.Join(spec.Dir, APISocket)).InstanceInfo(context.Background()); derr == nil {
			t.Errorf("a firecracker process still answers after the failed start")
		}
	}
	if _, err := New("/nonexistent/firecracker"); err == nil {
		t.Errorf("New accepted a missing binary")
	}
}

// TestFirecrackerOpensBangersTAP checks that a TAP as banger makes it
// (persistent, vnet header, on the bridge, in a namespace) is one
// Firecracker opens: the VMM started in the namespace attaches to it
// and the TAP gets its carrier.
func TestFirecrackerOpensBangersTAP(t *testing.T) {
	bin := requireFirecracker(t)
	testenv.RequireRoot(t)
	ns := testenv.NetNS(t)
	n, err := hostnet.Open(hostnet.Config{NetNS: ns, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	tap := hostnet.TAPName("fc-test")
	if err := n.EnsureBridge(); err != nil {
		t.Fatal(err)
	}
	if err := n.AddTAP(tap); err != nil {
		t.Fatal(err)
	}
	if flags := testenv.IP(t, "-n", ns, "-o", "link", "show", "dev", tap); !strings.Contains(flags, "NO-CARRIER") {
		t.Fatalf("TAP has a carrier before any VMM opened it: %s", flags)
	}
	spec := testSpec(t)
	spec.TAP, spec.MAC = tap, hostnet.MAC("fc-test").String()
	b, err := New(bin)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m := startIn(t, n, b, spec)
	cfg, err := m.Client().VMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nics, _ := cfg["network-interfaces"].([]any)
	if len(nics) != 1 || nics[0].(map[string]any)["host_dev_name"] != tap || nics[0].(map[string]any)["guest_mac"] != spec.MAC {
		t.Errorf("network interfaces = %v", cfg["network-interfaces"])
	}
	if flags := testenv.IP(t, "-n", ns, "-o", "link", "show", "dev", tap); strings.Contains(flags, "NO-CARRIER") || !strings.Contains(flags, "master "+hostnet.DefaultBridge) {
		t.Errorf("TAP after Firecracker opened it: %s", flags)
	}
}

// TestFirecrackerJailer starts Firecracker under the real jailer: an
// unprivileged uid, a chroot with the kernel and drives hard-linked in
// (same inodes, no copies), a TAP it may open as that uid, a snapshot
// written in the jail and moved out, and the jail gone with the process.
func TestFirecrackerJailer(t *testing.T) {
	bin := requireFirecracker(t)
	testenv.RequireRoot(t)
	jailerBin, err := exec.LookPath("jailer")
	if err != nil {
		testenv.SkipExpected(t, "firecracker", "no jailer binary on PATH: the jailer tests run where Firecracker's jailer is installed")
	}
	spec := testSpec(t)
	data := filepath.Join(spec.Dir, "data.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", data, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	spec.Drives = append(spec.Drives, vmm.Drive{ID: "data", Path: data})
	ns := testenv.NetNS(t)
	n, err := hostnet.Open(hostnet.Config{NetNS: ns, StateDir: t.TempDir(), TAPOwner: 30000, TAPGroup: 30000})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	spec.TAP, spec.MAC = hostnet.TAPName("jailed"), hostnet.MAC("jailed").String()
	if err := n.EnsureBridge(); err != nil {
		t.Fatal(err)
	}
	if err := n.AddTAP(spec.TAP); err != nil {
		t.Fatal(err)
	}
	base, _ := os.MkdirTemp("", "jail") // short: sockets live in the jail
	t.Cleanup(func() { os.RemoveAll(base) })
	plain, err := New(bin)
	if err != nil {
		t.Fatal(err)
	}
	b, err := plain.WithJailer(Jailer{Bin: jailerBin, ChrootBase: base, UID: 30000, GID: 30000, Cgroups: []string{"cpu.shares=512"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m := startIn(t, n, b, spec)
	jail := filepath.Join(base, "firecracker", filepath.Base(spec.Dir), "root")
	if info, err := m.Client().InstanceInfo(ctx); err != nil || info.State != "Running" {
		t.Fatalf("jailed instance = %+v, %v", info, err)
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.PID()))
	if !strings.Contains(string(status), "Uid:\t30000\t30000") {
		t.Errorf("jailed Firecracker does not run as uid 30000:\n%s", status)
	}
	// The jailer pivots into the jail in a mount namespace of its own:
	// the process's / is the jail, holding the very kernel file.
	k, _ := os.Stat(spec.Kernel)
	if seen, err := os.Stat(fmt.Sprintf("/proc/%d/root/vmlinux", m.PID())); err != nil || !os.SameFile(k, seen) {
		t.Errorf("jailed Firecracker's / is not the jail: %v", err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/root%s", m.PID(), spec.Kernel)); err == nil {
		t.Errorf("jailed Firecracker sees the host's %s", spec.Kernel)
	}
	for host, inJail := range map[string]string{spec.Kernel: "vmlinux", spec.Drives[0].Path: "drive-root", data: "drive-data"} {
		a, errA := os.Stat(host)
		j, errB := os.Stat(filepath.Join(jail, inJail))
		if errA != nil || errB != nil || !os.SameFile(a, j) {
			t.Errorf("%s is not hard-linked into the jail as %s: %v %v", host, inJail, errA, errB)
		}
	}
	if fi, _ := os.Stat(data); fi.Sys().(*syscall.Stat_t).Uid != 30000 {
		t.Errorf("the writable drive is not the jail user's")
	}
	// cgroup v1 here: the jailer made the VM a cpu cgroup of its own.
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", m.PID()))
	want := "firecracker/" + filepath.Base(spec.Dir)
	shares, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpu/firecracker", filepath.Base(spec.Dir), "cpu.shares"))
	if !strings.Contains(string(cg), want) || strings.TrimSpace(string(shares)) != "512" {
		t.Errorf("cgroup: %q, cpu.shares %q", cg, shares)
	}
	if sock := m.sock(APISocket); len(sock) >= 108 {
		t.Errorf("API socket path %s is too long for a Unix socket", sock)
	}
	cfg, _ := m.Client().VMConfig(ctx)
	if bs, _ := cfg["boot-source"].(map[string]any); bs["kernel_image_path"] != "/vmlinux" {
		t.Errorf("boot source = %v", cfg["boot-source"])
	}
	if flags := testenv.IP(t, "-n", ns, "-o", "link", "show", "dev", spec.TAP); strings.Contains(flags, "NO-CARRIER") {
		t.Errorf("the jailed Firecracker did not attach to its TAP: %s", flags)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	state, mem := filepath.Join(spec.Dir, "vm.state"), filepath.Join(spec.Dir, "vm.mem")
	if err := m.CreateSnapshot(ctx, state, mem); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(mem); err != nil || fi.Size() != 128<<20 {
		t.Errorf("snapshot memory file out of the jail: %v %v", fi, err)
	}
	m.Kill()
	m.Wait(ctx)
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(filepath.Dir(jail)); os.IsNotExist(err) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Dir(jail)); !os.IsNotExist(err) {
		t.Errorf("the jail outlived its Firecracker: %v", err)
	}
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/cpu/firecracker", filepath.Base(spec.Dir))); !os.IsNotExist(err) {
		t.Errorf("the VM's cgroup outlived its Firecracker: %v", err)
	}
	if _, err := os.Stat(spec.Kernel); err != nil {
		t.Errorf("removing the jail removed the kernel it linked: %v", err)
	}
}

// startIn starts spec's Firecracker in the VM network's namespace and
// kills it when the test ends.
func startIn(t *testing.T, n *hostnet.Net, b *Backend, spec vmm.Spec) *Machine {
	t.Helper()
	var m *Machine
	if err := n.Do(func() (err error) { m, err = b.Start(context.Background(), spec); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Kill(); m.Wait(context.Background()) })
	return m
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testKernel.dir != "" {
		os.RemoveAll(testKernel.dir)
	}
	os.Exit(code)
}
