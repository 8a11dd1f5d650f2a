package integration

import (
	"bytes"
	"context"
	"encoding/json"

	"banger/client"
	"banger/internal/api"
	"banger/internal/testenv"
	"fmt"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/imagepull/imagetest"
)

type vmJSON struct {
	Name      string   `json:"name"`
	State     string   `json:"state"`
	Image     string   `json:"image"`
	Kernel    string   `json:"kernel"`
	VMM       string   `json:"vmm"`
	VCPU      int      `json:"vcpu"`
	MemoryMiB int      `json:"memory_mib"`
	IP        string   `json:"ip"`
	Network   string   `json:"network"`
	Ports     []string `json:"ports"`
	PID       int      `json:"pid"`
	Dir       string   `json:"dir"`
	Error     string   `json:"error"`
	CreatedAt string   `json:"created_at"`
	Origin    string   `json:"origin"`
	HostKey   string   `json:"ssh_host_key"`
}

// busyboxLayer is a layer with a static busybox and a few applets.
func busyboxLayer(t testing.TB) []byte {
	t.Helper()
	bbDeb := testenv.Fixture(t, testenv.BusyboxDeb, "the busybox-static .deb (scripts/vm-fixtures.sh)")
	x := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", bbDeb, x).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v %s", err, out)
	}
	bb, _ := os.ReadFile(filepath.Join(x, "bin", "busybox"))
	ents := []imagetest.Entry{{Name: "bin/busybox", Body: string(bb), Mode: 0o755}, {Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\n"}}
	for _, a := range []string{"sh", "ls", "cat", "sleep", "echo", "sync", "true", "false", "mkdir"} {
		ents = append(ents, imagetest.Entry{Name: "bin/" + a, Type: '2', Link: "busybox"})
	}
	return imagetest.Layer(t, ents...)
}

// vmFixtures imports the Debian cloud kernel and pulls a busybox image
// into the instance, as a user would.
func vmFixtures(t testing.TB, in *instance) {
	t.Helper()
	deb := testenv.KernelPackage(t)
	testenv.RequireBinary(t, "qemu-system-x86_64", "apt-get install qemu-system-x86")
	reg := imagetest.StartRegistry(t)
	layer := busyboxLayer(t)
	ref := reg.Push(t, "test/busybox:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{layer}}))
	in.ok("image", "pull", "-q", ref, "--name", "bb")
	// The same, with a command that reports and leaves a mark on the
	// VM's writable disk: what a user's program writes must survive a
	// stop and start.
	mark := reg.Push(t, "test/busybox:mark", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{layer},
		Config: v1.Config{Cmd: []string{"/bin/sh", "-c", "if [ -f /mark ]; then echo MARK-FOUND; else echo MARK-NEW; fi; echo x > /mark; sync"}}}))
	in.ok("image", "pull", "-q", mark, "--name", "bbmark")
	in.ok("kernel", "import", "k", "--from", deb)
}

func TestVMLifecycle(t *testing.T) {
	in := newInstance(t)
	vmFixtures(t, in)
	create := []string{"vm", "create", "--name", "t1", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "512M", "--disk-size", "256M", "--vmm", "qemu"}

	var v vmJSON
	in.jsonOut(&v, append(create, "--json")...)
	if v.State != "running" || v.PID <= 0 || !processAlive(v.PID) || v.VMM != "qemu" || v.VCPU != 1 || v.MemoryMiB != 512 || v.Image != "bb" || v.Kernel != "k" {
		t.Fatalf("created VM = %+v", v)
	}
	var list []vmJSON
	in.jsonOut(&list, "vm", "ls", "--json")
	if len(list) != 1 || list[0].Name != "t1" || list[0].CreatedAt == "" {
		t.Errorf("ls = %+v", list)
	}
	if logs := in.ok("vm", "logs", "t1"); !strings.Contains(logs, "banger-vsock-agent: ready") {
		t.Errorf("console lacks the ready line:\n%s", logs)
	}
	in.fails("exists", create...)
	in.fails("already running", "vm", "start", "t1")
	in.fails("DNS label", "vm", "create", "--name", "Not_A_Label", "--image", "bb")
	in.fails("pull it with", "vm", "create", "--image", "nope")

	// A graceful stop leaves the writable disk clean.
	in.jsonOut(&v, "vm", "stop", "t1", "--json")
	if v.State != "stopped" || v.PID != 0 {
		t.Errorf("after stop: %+v", v)
	}
	if out, err := exec.Command("e2fsck", "-fn", filepath.Join(v.Dir, "data.ext4")).CombinedOutput(); err != nil {
		t.Errorf("writable disk not clean after stop: %v\n%s", err, out)
	}
	in.fails("not running", "vm", "stop", "t1")
	in.jsonOut(&v, "vm", "start", "t1", "--json")
	if v.State != "running" || !processAlive(v.PID) {
		t.Errorf("after start: %+v", v)
	}

	// The daemon can go away and come back without the VM noticing.
	pid := v.PID
	in.ok("daemon", "stop")
	if !processAlive(pid) {
		t.Fatalf("stopping the daemon killed the VM")
	}
	in.jsonOut(&v, "vm", "show", "t1", "--json")
	if v.State != "running" || v.PID != pid {
		t.Errorf("after daemon restart: %+v", v)
	}
	in.fails("is running", "vm", "rm", "t1")
	in.ok("vm", "rm", "-f", "t1")

	// A write survives stop and start, and rm leaves nothing.
	var m vmJSON
	in.jsonOut(&m, "vm", "create", "--name", "w1", "--image", "bbmark", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--json")
	in.waitLogs("w1", "MARK-NEW")
	in.ok("vm", "stop", "w1")
	in.ok("vm", "start", "w1")
	in.waitLogs("w1", "MARK-FOUND")
	in.ok("vm", "stop", "w1")
	logs := in.ok("vm", "logs", "w1")
	lines := map[string]int{}
	for _, l := range strings.Split(logs, "\n") {
		lines[strings.TrimSpace(l)]++
	}
	if lines["MARK-NEW"] != 1 || lines["MARK-FOUND"] != 1 {
		t.Errorf("the first boot's write was not there on the second:\n%s", logs)
	}
	in.ok("vm", "rm", "w1")
	if _, err := os.Stat(m.Dir); !os.IsNotExist(err) {
		t.Errorf("VM directory left after rm")
	}
	if processAlive(pid) {
		t.Errorf("VM process %d survived rm -f", pid)
	}
	if _, err := os.Stat(v.Dir); !os.IsNotExist(err) {
		t.Errorf("VM directory left after rm")
	}
	in.fails("not found", "vm", "show", "t1")
}

func TestVMThatCannotBootEndsInError(t *testing.T) {
	in := newInstance(t)
	vmFixtures(t, in)
	// The bare vmlinux has no initramfs: its virtio drivers are modules,
	// so it cannot reach the image and panics.
	var k struct{ Vmlinux string }
	in.jsonOut(&k, "kernel", "show", "k", "--json")
	in.ok("kernel", "import", "bare", "--from", k.Vmlinux)
	r := in.fails("failed to start", "vm", "create", "--name", "doomed", "--image", "bb", "--kernel", "bare", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu")
	if !strings.Contains(r.stderr, "Kernel panic") && !strings.Contains(r.stderr, "VFS") {
		t.Errorf("error lacks the console's tail: %s", r.stderr)
	}
	var v vmJSON
	in.jsonOut(&v, "vm", "show", "doomed", "--json")
	if v.State != "error" || v.PID != 0 || v.Error == "" {
		t.Errorf("failed VM = %+v", v)
	}
	in.ok("vm", "rm", "doomed")
	if _, err := os.Stat(v.Dir); !os.IsNotExist(err) {
		t.Errorf("VM directory left after rm")
	}
}

// diskUsage is the bytes files under dir occupy.
func diskUsage(t *testing.T, dir string) int64 {
	var total int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			}
		}
		return nil
	})
	return total
}

func TestVMsCostLittleDiskAndSurviveConcurrency(t *testing.T) {
	in := newInstance(t)
	vmFixtures(t, in)
	vmsDir := in.path("state", "vms")
	before := diskUsage(t, vmsDir)
	base := []string{"vm", "create", "--no-start", "--image", "bb", "--kernel", "k", "--vmm", "qemu"}

	// Ten distinct names and ten of one name, all at once.
	var wg sync.WaitGroup
	results := make([]result, 20)
	for i := range results {
		name := fmt.Sprintf("c%d", i)
		if i >= 10 {
			name = "same"
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = in.run(append(base, "--name", name)...)
		}()
	}
	wg.Wait()
	sameOK := 0
	for i, r := range results {
		switch {
		case i < 10 && r.code != 0:
			t.Errorf("create c%d: %s", i, r.stderr)
		case i >= 10 && r.code == 0:
			sameOK++
		case i >= 10 && !strings.Contains(r.stderr, "exists"):
			t.Errorf("losing create of 'same': %q", r.stderr)
		}
	}
	if sameOK != 1 {
		t.Errorf("%d creates of one name succeeded, want 1", sameOK)
	}
	// Ten more, sequentially: twenty VMs from one image in all.
	for i := 10; i < 19; i++ {
		in.ok(append(base, "--name", fmt.Sprintf("c%d", i))...)
	}
	added := diskUsage(t, vmsDir) - before
	t.Logf("20 VMs from one image added %d KiB of disk", added>>10)
	if added > 5<<20 {
		t.Errorf("20 VMs added %d bytes, want under 5 MiB: creating a VM must copy no image data", added)
	}
	var list []vmJSON
	in.jsonOut(&list, "vm", "ls", "--json")
	if len(list) != 20 {
		t.Fatalf("%d VMs listed, want 20", len(list))
	}
	// Remove half concurrently, prune the rest.
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := in.run("vm", "rm", fmt.Sprintf("c%d", i)); r.code != 0 {
				t.Errorf("rm c%d: %s", i, r.stderr)
			}
		}()
	}
	wg.Wait()
	var pruned []string
	in.jsonOut(&pruned, "vm", "prune", "--json")
	if len(pruned) != 10 {
		t.Errorf("prune removed %v, want the 10 left", pruned)
	}
	entries, _ := os.ReadDir(vmsDir)
	in.jsonOut(&list, "vm", "ls", "--json")
	if len(list) != 0 || len(entries) != 0 {
		t.Errorf("after rm and prune: %d records, %d directories", len(list), len(entries))
	}
}

// waitLogs waits until a VM's console shows s as a line of its own.
func (in *instance) waitLogs(name, s string) {
	in.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		for _, l := range strings.Split(in.ok("vm", "logs", name), "\n") {
			if strings.TrimSpace(l) == s { // the console ends lines with \r\n
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	in.t.Fatalf("VM %s never printed %q:\n%s", name, s, in.ok("vm", "logs", name))
}

func TestDaemonKilledDuringVMCreate(t *testing.T) {
	in := newInstance(t)
	vmFixtures(t, in)
	pid := in.daemonPID()
	cmd := exec.Command(filepath.Join(binDir, "banger"), "vm", "create", "--name", "k9", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu")
	cmd.Env = in.env
	var cliErr bytes.Buffer
	cmd.Stderr = &cliErr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the VM is booting, then kill the daemon hard.
	deadline := time.Now().Add(time.Minute)
	var v vmJSON
	for time.Now().Before(deadline) {
		r := in.run("vm", "show", "k9", "--json")
		if r.code == 0 && json.Unmarshal([]byte(r.stdout), &v) == nil && v.State == "starting" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if v.State != "starting" {
		t.Fatalf("never saw the VM starting: %+v", v)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	cmd.Wait()
	for processAlive(pid) {
		time.Sleep(10 * time.Millisecond)
	}
	// The CLI says it in plain words, where the log is, and what became
	// of the VM (it asked a daemon started again), in one line.
	want := "banger: bangerd stopped during the request: its log is " + in.path("state", "bangerd.log") + "; k9 is in error: `banger vm start k9`, or `banger vm rm k9`"
	if lines := strings.Split(strings.TrimSpace(cliErr.String()), "\n"); lines[len(lines)-1] != want {
		t.Errorf("the CLI of the interrupted create ended %q, want %q", cliErr.String(), want)
	}
	// The next command starts a new daemon, which cleans up.
	in.jsonOut(&v, "vm", "show", "k9", "--json")
	if v.State != "error" || v.PID != 0 || !strings.Contains(v.Error, "interrupted") {
		t.Errorf("after restart: %+v", v)
	}
	if out, _ := exec.Command("pgrep", "-f", v.Dir).Output(); len(out) > 0 {
		t.Errorf("a VMM of the interrupted VM still runs: %s", out)
	}
	// And the VM starts normally afterwards.
	in.jsonOut(&v, "vm", "start", "k9", "--json")
	if v.State != "running" {
		t.Errorf("start after recovery: %+v", v)
	}
	in.ok("vm", "rm", "-f", "k9")
}

// TestDaemonRestartAdoptsVMs restarts the daemon under a running VM: the
// new daemon adopts the VMM, so when the guest powers itself off the VM
// is recorded as stopped at once, not at the next reconcile.
func TestDaemonRestartAdoptsVMs(t *testing.T) {
	in := newInstance(t)
	vmFixtures(t, in)
	var v vmJSON
	in.jsonOut(&v, "vm", "create", "--name", "ad", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--network", "none", "--json")
	in.ok("daemon", "stop")
	// The guest's init powers off a second later (the exec returns first);
	// the CLI starts the daemon again on the way.
	in.ok("vm", "exec", "ad", "--", "sh", "-c", "(sleep 1; busybox kill -TERM 1) </dev/null >/dev/null 2>&1 &")
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		in.jsonOut(&v, "vm", "show", "ad", "--json")
		if v.State == "stopped" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if v.State != "stopped" || v.PID != 0 {
		dlog, _ := os.ReadFile(in.path("state", "bangerd.log"))
		t.Fatalf("a VM that powered off under a restarted daemon: %+v (process alive: %v)\ndaemon log:\n%s\nconsole:\n%s", v, processAlive(v.PID), dlog, in.ok("vm", "logs", "ad"))
	}
	// It was the guest's own shutdown (the init stage's line, then the
	// kernel's), not a kill of its VMM.
	if logs := in.ok("vm", "logs", "ad"); !strings.Contains(logs, "terminated: shutting down") || !strings.Contains(logs, "reboot: Power down") {
		t.Errorf("the guest did not shut down on its own; console:\n%s", tailLines(logs, 20))
	}
	in.ok("vm", "start", "ad")
	in.ok("vm", "rm", "-f", "ad")
}

// TestVMProgressStream follows a create and a start through their
// progress events (what the CLI draws on a terminal). The first boot of
// a shape also makes its warm template.
func TestVMProgressStream(t *testing.T) {
	in := newInstance(t)
	vmFixtures(t, in)
	c := client.New(in.path("run", "bangerd.sock"))
	var stages []string
	record := func(ev api.Event) {
		if ev.Type == api.EventProgress {
			stages = append(stages, ev.Stage)
		}
	}
	v, err := c.CreateVM(context.Background(), api.VMCreateRequest{Name: "pg", Image: "bb", Kernel: "k", VCPU: 1, MemoryMiB: 256, DiskBytes: 128 << 20, VMM: "qemu"}, record)
	if err != nil || v.State != "running" || strings.Join(stages, " ") != "disk network vmm boot template" {
		t.Fatalf("create: %+v %v, stages %v", v, err, stages)
	}
	in.ok("vm", "stop", "pg")
	stages = nil
	v, err = c.VMAction(context.Background(), "pg", "start", record)
	if err != nil || v.State != "running" || strings.Join(stages, " ") != "network vmm boot" {
		t.Errorf("start: %+v %v, stages %q", v, err, stages)
	}
	// A failure arrives as the stream's error event, one clear line.
	_, err = c.VMAction(context.Background(), "pg", "start", func(api.Event) {})
	if err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("starting a running VM: %v", err)
	}
	in.ok("vm", "rm", "-f", "pg")
}
