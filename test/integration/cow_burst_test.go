package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/paths"
	"banger/internal/testenv"
)

// TestVMBurst starts six VMs of one shape at once, the first of their
// shape (one boots and makes the warm template, the others wait for it
// and restore), then six more, all warm, and forks of one of them: every
// VM runs, with a name, address and SSH host key of its own.
func TestVMBurst(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	vmFixtures(t, in)
	create := []string{"vm", "create", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--network", "shared", "--json"}
	vms := make([]vmJSON, 12)
	burst := func(from int) {
		parallel(t, 6, func(i int) { in.jsonOut(&vms[from+i], create...) })
	}
	burst(0)
	cold := 0
	for _, v := range vms[:6] {
		if v.Origin == "" {
			cold++
		}
	}
	if cold != 1 {
		t.Errorf("%d of six VMs of a new shape booted cold, want 1 (the template's maker)", cold)
	}
	burst(6)
	var forks []vmJSON
	in.jsonOut(&forks, "vm", "fork", vms[0].Name, "-n", "4", "--json")
	names, ips, keys := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, v := range append(vms, forks...) {
		var cur vmJSON
		in.jsonOut(&cur, "vm", "show", v.Name, "--json")
		if cur.State != "running" || cur.IP == "" || cur.HostKey == "" {
			t.Errorf("%s = %+v", v.Name, cur)
		}
		if names[cur.Name] || ips[cur.IP] || keys[cur.HostKey] {
			t.Errorf("%s shares its name, address or host key: %+v", cur.Name, cur)
		}
		names[cur.Name], ips[cur.IP], keys[cur.HostKey] = true, true, true
		if h := strings.TrimSpace(in.ok("vm", "exec", cur.Name, "--", "busybox", "hostname")); h != cur.Name {
			t.Errorf("%s's host name is %q", cur.Name, h)
		}
	}
	if len(names) != 16 {
		t.Errorf("%d VMs, want 16", len(names))
	}
	rm := []string{"vm", "rm", "-f"}
	for n := range names {
		rm = append(rm, n)
	}
	in.ok(rm...)
	if taps := in.taps(); len(taps) != 0 {
		t.Errorf("TAPs left: %v", taps)
	}
}

// TestBurstFaults: a burst of forks that fills the disk (those that fit
// run, the others fail in one line each and leave nothing), a burst of
// boots that fills the guest RAM's tmpfs (likewise; restores need none
// of it), and bangerd killed in the middle of a burst (the next daemon
// finishes or undoes each VM).
func TestBurstFaults(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	in.smallDisk(t, "1500M")
	l, _ := paths.New(in.home)
	// Guest RAM in a tmpfs of 160 MiB, made before the daemon starts
	// (as root's, closed to others: the daemon checks).
	ramDir := l.RAMDir()
	os.MkdirAll(ramDir, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=160m,mode=0700", "banger-test-ram", ramDir).CombinedOutput(); err != nil {
		t.Fatalf("mounting a tmpfs for the guest RAM: %v %s", err, out)
	}
	t.Cleanup(func() { in.stopDaemon(); reapHome(in.home); exec.Command("umount", "-l", ramDir).Run() })
	vmFixtures(t, in)
	shape := []string{"--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "256M", "--vmm", "qemu", "--network", "none"}

	// Boots fill the tmpfs: each guest's RAM is a file there.
	results := make([]result, 4)
	parallel(t, 4, func(i int) {
		results[i] = in.run(append([]string{"vm", "create", "--name", "b" + strconv.Itoa(i), "--cold"}, shape...)...)
	})
	booted, full := 0, 0
	for i, r := range results {
		if r.code == 0 {
			booted++
			continue
		}
		full++
		// Refused before it starts, or killed by the full tmpfs.
		checkOneLine(t, r, "guest RAM: "+ramDir)
		var v vmJSON
		in.jsonOut(&v, "vm", "show", "b"+strconv.Itoa(i), "--json")
		if v.State != "error" || v.PID != 0 || len(vmmsOf(v.Dir)) != 0 {
			t.Errorf("b%d after a full tmpfs: %+v", i, v)
		}
		if _, err := os.Stat(l.RAMFile(filepath.Base(v.Dir))); err == nil {
			t.Errorf("b%d's RAM file was left", i)
		}
	}
	t.Logf("boots with guest RAM in 160 MiB: %d ran, %d failed", booted, full)
	if booted == 0 || full == 0 {
		t.Errorf("%d boots ran and %d failed: the tmpfs was meant to hold some", booted, full)
	}
	in.ok("vm", "rm", "-f", "b0", "b1", "b2", "b3")
	// A VM with 96 MiB on its disk (room in the tmpfs for its RAM),
	// snapshotted, then gone: its forks map the snapshot's memory, not
	// the tmpfs.
	if out, err := exec.Command("mount", "-o", "remount,size=1g", ramDir).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v %s", err, out)
	}
	in.ok(append([]string{"vm", "create", "--name", "src", "--cold"}, shape...)...)
	in.ok("vm", "exec", "src", "--", "sh", "-c", "mkdir -p /root && dd if=/dev/urandom of=/root/blob bs=1M count=96 2>/dev/null && sync")
	var sn useJSON
	in.jsonOut(&sn, "vm", "snapshot", "src", "--name", "s", "--json")
	in.ok("vm", "rm", "-f", "src")
	if out, err := exec.Command("mount", "-o", "remount,size=160m", ramDir).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v %s", err, out)
	}
	// Fill the disk but for room for two and a half forks' copies of
	// the disk.
	var disk int64
	for _, f := range sn.Files {
		if f.Role == "disk" {
			disk = f.DiskBytes
		}
	}
	room := disk * 5 / 2
	var fs syscall.Statfs_t
	syscall.Statfs(in.home, &fs)
	if free := int64(fs.Bavail) * fs.Bsize; free > room {
		if out, err := exec.Command("fallocate", "-l", strconv.FormatInt(free-room, 10), in.path("filler")).CombinedOutput(); err != nil {
			t.Fatalf("fallocate: %v %s", err, out)
		}
	}
	vmsBefore := len(in.vmNames())
	syscall.Statfs(in.home, &fs)
	t.Logf("free before the forks: %s", mib(int64(fs.Bavail)*fs.Bsize))
	results = make([]result, 4)
	parallel(t, 4, func(i int) { results[i] = in.run("vm", "fork", "s", "--name", "d"+strconv.Itoa(i)) })
	forked := 0
	for i, r := range results {
		if r.code == 0 {
			forked++
			in.ok("vm", "exec", "d"+strconv.Itoa(i), "--", "true")
			continue
		}
		t.Logf("d%d: %s", i, strings.TrimSpace(r.stderr))
		checkOneLine(t, r, "no space left on device")
		if in.run("vm", "show", "d"+strconv.Itoa(i)).code == 0 {
			t.Errorf("d%d was left behind after its fork failed", i)
		}
	}
	t.Logf("forks with room for two and a half disks of %s: %d made", mib(disk), forked)
	if forked != 2 {
		t.Errorf("%d of 4 forks made: the disk had room for two", forked)
	}
	if got := len(in.vmNames()); got != vmsBefore+forked {
		t.Errorf("%d VMs after the burst, want %d", got, vmsBefore+forked)
	}
	dirs, _ := filepath.Glob(filepath.Join(l.VMsDir(), "*"))
	if len(dirs) != vmsBefore+forked {
		t.Errorf("VM directories after the burst: %d, want %d", len(dirs), vmsBefore+forked)
	}
	os.Remove(in.path("filler"))

	// bangerd killed while four forks restore.
	pid := in.daemonPID()
	cmd := in.cliWith("vm", "fork", "s", "--name", "k", "-n", "4")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); len(in.restoringVMMs()) < 2+forked; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("never saw the burst's restores under way")
		}
	}
	syscall.Kill(pid, syscall.SIGKILL)
	cmd.Wait()
	for processAlive(pid) {
		time.Sleep(10 * time.Millisecond)
	}
	interrupted := 0
	for i := 1; i <= 4; i++ {
		name := "k-" + strconv.Itoa(i)
		r := in.run("vm", "show", name, "--json")
		if r.code != 0 {
			continue // killed before it was recorded: nothing of it left (checked below)
		}
		var v vmJSON
		in.jsonOut(&v, "vm", "show", name, "--json")
		switch v.State {
		case "running":
			in.ok("vm", "exec", name, "--", "true")
		case "error":
			interrupted++
			if !strings.Contains(v.Error, "interrupted") || len(vmmsOf(v.Dir)) != 0 {
				t.Errorf("%s after the kill: %+v, VMMs %v", name, v, vmmsOf(v.Dir))
			}
			if interrupted == 1 {
				// It boots from its own disk (RAM in the small tmpfs:
				// one at a time).
				in.ok("vm", "start", name)
			}
		default:
			t.Errorf("%s after the kill: %+v", name, v)
		}
	}
	t.Logf("after bangerd was killed mid-burst: %d forks were interrupted", interrupted)
	recorded := map[string]bool{}
	for _, n := range in.vmNames() {
		var v vmJSON
		in.jsonOut(&v, "vm", "show", n, "--json")
		recorded[v.Dir] = true
	}
	dirs, _ = filepath.Glob(filepath.Join(l.VMsDir(), "*"))
	for _, d := range dirs {
		if !recorded[d] {
			t.Errorf("a VM directory of no VM: %s", d)
		}
	}
}

// checkOneLine checks that a failed CLI run ended in one error line
// that says want.
func checkOneLine(t *testing.T, r result, want string) {
	t.Helper()
	var errLines []string
	for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		if strings.HasPrefix(l, "banger: ") {
			errLines = append(errLines, l)
		}
	}
	if len(errLines) != 1 || !strings.Contains(errLines[0], want) {
		t.Errorf("stderr %q: want one line `banger: …%s…`", r.stderr, want)
	}
}

// cliWith is the instance's CLI as a command, from its own binaries.
func (in *instance) cliWith(args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(in.bins, "banger"), args...)
	cmd.Env = in.env
	return cmd
}
