package integration

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"banger/client"
	"banger/internal/api"
)

// TestAgentStuckGuestCannotHangTheDaemon makes a real guest's agent go
// bad (testdata/flood: the agent frozen, its port flooded with pings
// that are never read) and checks that nothing in the daemon waits on
// it: a key push is bounded, a kill cuts a graceful stop that is stuck
// on the guest, and the VM is removed with no VMM left behind.
func TestAgentStuckGuestCannotHangTheDaemon(t *testing.T) {
	in := newInstance(t)
	vmFixtures(t, in)
	flood := filepath.Join(t.TempDir(), "flood")
	_, file, _, _ := runtime.Caller(0)
	build := exec.Command("go", "build", "-o", flood, "./testdata/flood")
	build.Dir = filepath.Dir(file)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the flooder: %v\n%s", err, out)
	}
	in.ok("vm", "create", "--name", "stuck", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--network", "none")
	var v vmJSON
	in.jsonOut(&v, "vm", "show", "stuck", "--json")
	// Whatever happens, no VMM of this test outlives it.
	t.Cleanup(func() {
		for _, pid := range vmmsOf(v.Dir) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	in.ok("vm", "cp", flood, "stuck:/flood")
	// setsid: the exec's end kills its process group.
	in.ok("vm", "exec", "stuck", "--", "sh", "-c", "busybox setsid /flood </dev/null >/dev/null 2>&1 &")
	time.Sleep(5 * time.Second) // the flooder waits a second, then jams the port

	// ssh-key add pushes the key to every running VM.
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewPublicKey(pub)
	c := client.New(in.path("run", "bangerd.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	began := time.Now()
	err := c.AddSSHKey(ctx, api.SSHKeyRequest{Key: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))})
	cancel()
	if took := time.Since(began); err != nil || took > 25*time.Second {
		t.Errorf("ssh-key add with a stuck guest: %v after %s (the push is bounded at 10 s)", err, took.Round(time.Second))
	} else {
		t.Logf("ssh-key add took %s", took.Round(100*time.Millisecond))
	}
	// The guest really is stuck: the push did not get through.
	in.logShows(t, `"msg":"authorized keys not pushed (the VM gets them at its next start)","vm":"stuck"`)

	// A graceful stop, stuck on the guest (its power-off through the
	// agent, then the ACPI button nobody handles), holds the VM's lock
	// when the kill comes.
	stop := in.cli("vm", "stop", "stuck")
	var stopOut bytes.Buffer
	stop.Stdout, stop.Stderr = &stopOut, &stopOut
	if err := stop.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- stop.Wait() }()
	t.Cleanup(func() { stop.Process.Kill() })
	// Under way once the VM is stopping; then stuck on the guest.
	for deadline := time.Now().Add(30 * time.Second); v.State != "stopping"; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("vm stop did not begin: the VM is %s", v.State)
		}
		in.jsonOut(&v, "vm", "show", "stuck", "--json")
	}
	time.Sleep(2 * time.Second)
	began = time.Now()
	r := in.runLimit(40*time.Second, nil, "vm", "kill", "stuck")
	if took := time.Since(began); r.code != 0 || took > 15*time.Second {
		t.Fatalf("vm kill during a stuck stop: exit %d after %s: %s", r.code, took.Round(time.Second), r.stderr)
	}
	t.Logf("vm kill took %s", time.Since(began).Round(100*time.Millisecond))
	// The kill came while the stop was under way, and cut it.
	in.logShows(t, `"msg":"graceful stop cut short by a kill","vm":"stuck"`)
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("the stop a kill cut short: %v: %s", err, stopOut.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("vm stop outlived the kill that cut it short by 15 s")
	}
	in.jsonOut(&v, "vm", "show", "stuck", "--json")
	if v.State != "stopped" {
		t.Errorf("after the kill the VM is %s", v.State)
	}
	began = time.Now()
	if r := in.runLimit(40*time.Second, nil, "vm", "rm", "-f", "stuck"); r.code != 0 || time.Since(began) > 15*time.Second {
		t.Errorf("vm rm -f: exit %d after %s: %s", r.code, time.Since(began).Round(time.Second), r.stderr)
	}
	if pids := vmmsOf(v.Dir); len(pids) > 0 {
		t.Errorf("VMM processes left: %v", pids)
	}
}

// vmmsOf lists the processes whose command line names the VM directory
// dir: its VMMs.
func vmmsOf(dir string) []int {
	var pids []int
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(dir)) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err == nil && pid != os.Getpid() && processAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// logShows fails the test unless the daemon's log has a line with want.
func (in *instance) logShows(t *testing.T, want string) {
	t.Helper()
	b, _ := os.ReadFile(in.path("state", "bangerd.log"))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, want) {
			t.Logf("daemon log: %s", l)
			return
		}
	}
	t.Errorf("the daemon's log has no %s", want)
}
