package integration

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/vmm/qemu"
)

// BenchmarkVMOverhead compares `banger vm start` (CLI, daemon,
// readiness) with launching the very same QEMU command line by hand and
// waiting for the same ready line, in one run, and reports bangerd's
// memory with 10 VMs running: start-ratio (banger/by hand, median of 5)
// and rss-MiB. The rounds are inside: run it with -benchtime 1x
// (bench/vm.sh does, and checks the goals).
func BenchmarkVMOverhead(b *testing.B) {
	report(b, measureVMOverhead(b))
}

func measureVMOverhead(t testing.TB) map[string]float64 {
	m := map[string]float64{}
	in := newInstance(t)
	vmFixtures(t, in)
	in.ok("vm", "create", "--no-start", "--name", "m1", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "512M", "--disk-size", "256M", "--vmm", "qemu", "--network", "none")
	const rounds = 5
	var banger, byHand []time.Duration
	var argv []string
	var dir string
	for i := 0; i < rounds; i++ {
		start := time.Now()
		var v vmJSON
		in.jsonOut(&v, "vm", "start", "m1", "--json")
		banger = append(banger, time.Since(start))
		if argv == nil {
			raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", v.PID))
			argv = strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
			dir = v.Dir
		}
		in.ok("vm", "stop", "m1")
	}
	for i := 0; i < rounds; i++ {
		byHand = append(byHand, bootByHand(t, argv, dir))
	}
	mb, mh := median(banger), median(byHand)
	t.Logf("vm start to ready, median of %d: banger %s, QEMU by hand %s: banger/by-hand = %.2f (+%s)",
		rounds, mb.Round(time.Millisecond), mh.Round(time.Millisecond), float64(mb)/float64(mh), (mb - mh).Round(time.Millisecond))
	m["start-ratio"], m["start-ms"], m["by-hand-ms"] = float64(mb)/float64(mh), ms(mb), ms(mh)

	// Daemon memory with 10 VMs running.
	for i := 0; i < 10; i++ {
		in.ok("vm", "create", "--name", fmt.Sprintf("mem%d", i), "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu")
	}
	pid := in.daemonPID()
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.Atoi(strings.Fields(l)[1])
			t.Logf("bangerd resident memory with 10 VMs running: %d KiB", kb)
			m["rss-MiB"] = float64(kb) / 1024
		}
	}
	for i := 0; i < 10; i++ {
		in.ok("vm", "rm", "-f", fmt.Sprintf("mem%d", i))
	}
	return m
}

// report reports a measurement's metrics on b, in name order.
func report(b *testing.B, m map[string]float64) {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		b.ReportMetric(m[k], k)
	}
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// bootByHand launches the very QEMU command line banger used for the VM
// in dir, waits for the agent's ready line, and powers it off: the
// baseline of banger's own start.
func bootByHand(t testing.TB, argv []string, dir string) time.Duration {
	t.Helper()
	console := filepath.Join(dir, qemu.ConsoleLog)
	os.Remove(filepath.Join(dir, qemu.QMPSocket))
	offset := int64(0)
	if fi, err := os.Stat(console); err == nil {
		offset = fi.Size()
	}
	// banger hands QEMU the console as a descriptor (-add-fd fd=N…,
	// opaque=console): give the hand-started one the console log there.
	out, err := os.OpenFile(console, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	start := time.Now()
	cmd := exec.Command(argv[0], argv[1:]...)
	var qemuErr bytes.Buffer
	cmd.Stderr = &qemuErr
	for i, a := range argv {
		if i > 0 && argv[i-1] == "-add-fd" && strings.Contains(a, "opaque=console") {
			var fd int
			fmt.Sscanf(a, "fd=%d", &fd)
			for len(cmd.ExtraFiles) < fd-3 {
				cmd.ExtraFiles = append(cmd.ExtraFiles, nil)
			}
			cmd.ExtraFiles = append(cmd.ExtraFiles, out)
		}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for {
		b, _ := os.ReadFile(console)
		if int64(len(b)) > offset && bytes.Contains(b[offset:], []byte("banger-vsock-agent: ready")) {
			break
		}
		if time.Since(start) > 2*time.Minute {
			b, _ := os.ReadFile(console)
			t.Fatalf("hand-started VM never ready: %v\nQEMU: %s\nconsole: %s", argv, qemuErr.String(), b[offset:])
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(start)
	q, err := qemu.DialQMP(context.Background(), filepath.Join(dir, qemu.QMPSocket))
	if err != nil {
		t.Logf("QMP: %v", err)
	} else {
		q.Execute(context.Background(), "system_powerdown", nil)
		q.Close()
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Logf("hand-started VM ignored the power button; killed")
		cmd.Process.Kill()
		<-done
	}
	return took
}
