package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/hostnet"
	"banger/internal/paths"
	"banger/internal/testenv"
)

type snapshotJSON struct {
	Name       string `json:"name"`
	Kind       string `json:"kind"`
	State      string `json:"state"`
	SourceVM   string `json:"source_vm"`
	Image      string `json:"image"`
	VMM        string `json:"vmm"`
	VMMVersion string `json:"vmm_version"`
	Dir        string `json:"dir"`
	SizeBytes  int64  `json:"size_bytes"`
	PausedMs   int64  `json:"paused_ms"`
	Files      []struct {
		Role      string `json:"role"`
		Name      string `json:"name"`
		SizeBytes int64  `json:"size_bytes"`
		DiskBytes int64  `json:"disk_bytes"`
	} `json:"files"`
}

// counter reads the background counter a VM runs.
func (in *instance) counter(name string) int {
	in.t.Helper()
	// The counter writes its first value a moment after it starts.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		r := in.run("vm", "exec", name, "--", "cat", "/root/counter")
		n, err := strconv.Atoi(strings.TrimSpace(r.stdout))
		if err == nil {
			return n
		}
		if time.Now().After(deadline) {
			in.t.Fatalf("%s: counter: %v %s", name, err, r.stderr)
		}
	}
}

// counts checks that name's counter process runs: its value goes up.
func (in *instance) counts(name string) {
	in.t.Helper()
	a := in.counter(name)
	time.Sleep(1500 * time.Millisecond)
	if b := in.counter(name); b <= a {
		in.t.Errorf("%s: the counter stood still (%d, then %d): its process is not running", name, a, b)
	}
}

// ramFiles lists the instance's guest RAM files.
func (in *instance) ramFiles() []string {
	l, _ := paths.New(in.home)
	m, _ := filepath.Glob(filepath.Join(l.RAMDir(), "*.ram"))
	return m
}

// TestVMSnapshotFork snapshots a running busybox VM that has written a
// file and runs a counter, forks two VMs from it and checks that each is
// a machine of its own with everything the source had: the file, the
// running process, its own name, address, MAC and SSH host key, exec and
// ssh working, and writes that stay in the VM that made them.
func TestVMSnapshotFork(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	vmFixtures(t, in)
	in.ok("vm", "create", "--name", "src", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--network", "shared", "--vmm", "qemu", "--cold")
	in.ok("vm", "exec", "src", "--", "sh", "-c", "mkdir -p /root && echo from-source > /root/marker && sync")
	in.ok("vm", "exec", "src", "--", "sh", "-c", "busybox setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /root/counter; sleep 0.2; done' </dev/null >/dev/null 2>&1 &")
	in.counts("src")

	var sn snapshotJSON
	in.jsonOut(&sn, "vm", "snapshot", "src", "--name", "s1", "--json")
	t.Logf("snapshot: %d bytes on disk, guest frozen %d ms, files %+v", sn.SizeBytes, sn.PausedMs, sn.Files)
	if sn.State != "ready" || sn.Kind != "snapshot" || sn.SourceVM != "src" || sn.VMM != "qemu" || sn.VMMVersion == "" || len(sn.Files) != 3 || sn.SizeBytes <= 0 {
		t.Fatalf("snapshot = %+v", sn)
	}
	var shown snapshotJSON
	in.jsonOut(&shown, "snapshot", "show", "s1", "--json")
	if shown.Name != "s1" || shown.Dir != sn.Dir {
		t.Errorf("snapshot show = %+v", shown)
	}
	if ls := in.ok("snapshot", "ls"); !strings.Contains(ls, "s1") || !strings.Contains(ls, "snapshot") {
		t.Errorf("snapshot ls:\n%s", ls)
	}
	// The source runs on.
	in.counts("src")
	in.fails("snapshot \"s1\" exists", "vm", "snapshot", "src", "--name", "s1")

	var forks []vmJSON
	in.jsonOut(&forks, "vm", "fork", "s1", "--name", "f", "-n", "2", "--json")
	if len(forks) != 2 || forks[0].Name != "f-1" || forks[1].Name != "f-2" {
		t.Fatalf("forks = %+v", forks)
	}
	var src vmJSON
	in.jsonOut(&src, "vm", "show", "src", "--json")
	seen := map[string]string{src.IP: "src"}
	keys := map[string]string{src.HostKey: "src"}
	for _, f := range forks {
		var v vmJSON
		in.jsonOut(&v, "vm", "show", f.Name, "--json")
		if v.State != "running" || v.Origin != "snapshot s1" || v.IP == "" {
			t.Fatalf("fork %s = %+v", f.Name, v)
		}
		if other, dup := seen[v.IP]; dup {
			t.Errorf("%s has %s's address %s", f.Name, other, v.IP)
		}
		seen[v.IP] = f.Name
		if other, dup := keys[v.HostKey]; dup || v.HostKey == "" {
			t.Errorf("%s has %s's SSH host key", f.Name, other)
		}
		keys[v.HostKey] = f.Name
		if h := strings.TrimSpace(in.ok("vm", "exec", f.Name, "--", "busybox", "hostname")); h != f.Name {
			t.Errorf("%s's host name is %q", f.Name, h)
		}
		if m := strings.TrimSpace(in.ok("vm", "exec", f.Name, "--", "cat", "/root/marker")); m != "from-source" {
			t.Errorf("%s: marker %q, want the source's", f.Name, m)
		}
		in.counts(f.Name)
		addr := in.ok("vm", "exec", f.Name, "--", "busybox", "ip", "addr", "show", "eth0")
		if !strings.Contains(addr, v.IP+"/") || !strings.Contains(addr, hostnet.MAC(vmID(t, v)).String()) || strings.Contains(addr, src.IP+"/") {
			t.Errorf("%s's eth0 (want %s, its own MAC, not %s):\n%s", f.Name, v.IP, src.IP, addr)
		}
		hosts := in.ok("vm", "exec", f.Name, "--", "cat", "/etc/hosts")
		if !strings.Contains(hosts, v.IP+"\t"+f.Name+".vm") || strings.Contains(hosts, "src") {
			t.Errorf("%s's /etc/hosts:\n%s", f.Name, hosts)
		}
		// NAME.vm resolves to this fork, not to the source.
		if r, err := in.lookup("udp", f.Name+".vm.", 1); err != nil || len(r.Answer) != 1 || !strings.Contains(r.Answer[0].String(), v.IP) {
			t.Errorf("%s.vm: %v %v", f.Name, r, err)
		}
		// The fork answers on its own address, beside the source on the
		// bridge (shared VMs reach each other).
		if out := in.ok("vm", "exec", "src", "--", "busybox", "ping", "-c", "1", "-W", "3", v.IP); !strings.Contains(out, "1 packets received") {
			t.Errorf("ping %s from src:\n%s", v.IP, out)
		}
	}
	// The bridge learned the source's MAC on the source's TAP only: a
	// fork's TAP stays down until the fork has its own MAC.
	fdb, err := exec.Command("ip", "netns", "exec", in.netns, "bridge", "fdb", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("bridge fdb show: %v %s", err, fdb)
	}
	srcMAC, srcTAP := hostnet.MAC(vmID(t, src)).String(), hostnet.TAPName(vmID(t, src))
	for _, l := range strings.Split(string(fdb), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[0] == srcMAC && f[1] == "dev" && f[2] != srcTAP {
			t.Errorf("the bridge learned the source's MAC on another port: %s", l)
		}
	}
	// The guard pins each fork's TAP to the fork's own MAC and address,
	// and the source's MAC to the source's TAP only.
	guard := in.guard()
	for _, f := range forks {
		id := vmID(t, f)
		if want := fmt.Sprintf("%q . %s . %s", hostnet.TAPName(id), hostnet.MAC(id), f.IP); !strings.Contains(guard, want) {
			t.Errorf("the guard lacks %s:\n%s", want, guard)
		}
	}
	if strings.Count(guard, srcMAC) != 1 {
		t.Errorf("the source's MAC is in the guard other than for the source:\n%s", guard)
	}
	conf := filepath.Join(t.TempDir(), "ssh_config")
	os.WriteFile(conf, []byte(in.ok("ssh-config")), 0o644)
	for _, name := range []string{"f-1", "f-2"} {
		cmd := exec.Command("ssh", "-F", conf, "-o", "BatchMode=yes", name+".vm", "busybox", "hostname")
		cmd.Env = in.env
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil || strings.TrimSpace(out.String()) != name {
			t.Errorf("ssh %s.vm: %v %q %s", name, err, out.String(), errb.String())
		}
	}

	// Writes stay where they were made.
	in.ok("vm", "exec", "f-1", "--", "sh", "-c", "echo one > /root/only-f1 && sync")
	for _, name := range []string{"f-2", "src"} {
		if r := in.run("vm", "exec", name, "--", "cat", "/root/only-f1"); r.code == 0 {
			t.Errorf("%s sees f-1's file", name)
		}
	}
	// Removing the snapshot breaks nothing made from it; a fork stopped
	// and started boots from its own disk and keeps its writes.
	in.ok("snapshot", "rm", "s1")
	if _, err := os.Stat(sn.Dir); !os.IsNotExist(err) {
		t.Errorf("snapshot directory left: %v", err)
	}
	in.counts("f-2")
	in.ok("vm", "stop", "f-1")
	in.ok("vm", "start", "f-1")
	if m := strings.TrimSpace(in.ok("vm", "exec", "f-1", "--", "cat", "/root/only-f1", "/root/marker")); m != "one\nfrom-source" {
		t.Errorf("f-1 after stop and start: %q", m)
	}
	if h := strings.TrimSpace(in.ok("vm", "exec", "f-1", "--", "busybox", "hostname")); h != "f-1" {
		t.Errorf("f-1's host name after a cold boot: %q", h)
	}

	// A running VM forks directly; the snapshot taken for it goes.
	var direct []vmJSON
	in.jsonOut(&direct, "vm", "fork", "f-2", "--name", "g", "--json")
	if len(direct) != 1 || direct[0].Name != "g" {
		t.Fatalf("fork of a running VM = %+v", direct)
	}
	in.counts("g")
	var all []snapshotJSON
	in.jsonOut(&all, "snapshot", "ls", "--json")
	if len(all) != 0 {
		t.Errorf("snapshots left after a direct fork: %+v", all)
	}

	// Nothing is left once the VMs are gone.
	in.ok("vm", "rm", "-f", "src", "f-1", "f-2", "g")
	if left := in.ramFiles(); len(left) != 0 {
		t.Errorf("guest RAM files left: %v", left)
	}
	if taps := in.taps(); len(taps) != 0 {
		t.Errorf("TAPs left: %v", taps)
	}
}

// vmID is the VM's id, from its directory's name.
func vmID(t *testing.T, v vmJSON) string { return filepath.Base(v.Dir) }

// TestForkClockAndEntropy: forks of a snapshot taken a while ago start
// with the host's time, not the snapshot's, and with random state of
// their own: two forks restored from the same memory read different
// bytes from /dev/urandom. (The kernel reseeds itself every uptime/2 s
// in its first two minutes, so on a snapshot this young the bytes would
// differ even without banger's reseed: this check holds the promise,
// not the mechanism, which vsockagent's identity ioctls carry.)
func TestForkClockAndEntropy(t *testing.T) {
	in := newInstance(t)
	vmFixtures(t, in)
	in.ok("vm", "create", "--name", "idle", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--network", "none", "--vmm", "qemu", "--cold")
	in.ok("vm", "snapshot", "idle", "--name", "old")
	in.ok("vm", "rm", "-f", "idle")
	taken := time.Now()
	time.Sleep(5*time.Second - time.Since(taken)) // the snapshot's clock is 5 s behind
	in.ok("vm", "fork", "old", "--name", "f", "-n", "2")
	random := map[string]string{}
	for _, name := range []string{"f-1", "f-2"} {
		before := time.Now().Unix()
		out := in.ok("vm", "exec", name, "--", "sh", "-c", "busybox date +%s; busybox head -c 32 /dev/urandom | busybox od -An -tx1")
		after := time.Now().Unix()
		lines := strings.SplitN(out, "\n", 2)
		guest, _ := strconv.ParseInt(lines[0], 10, 64)
		if guest < before-1 || guest > after+1 {
			t.Errorf("%s's clock reads %d, the host's %d..%d: %+d s off", name, guest, before, after, guest-before)
		}
		random[name] = strings.Join(strings.Fields(lines[1]), "")
		if len(random[name]) != 64 {
			t.Fatalf("%s: /dev/urandom read %q", name, lines[1])
		}
	}
	if random["f-1"] == random["f-2"] {
		t.Errorf("two forks of one snapshot read the same random bytes: %s", random["f-1"])
	}
	in.ok("vm", "rm", "-f", "f-1", "f-2")
}
