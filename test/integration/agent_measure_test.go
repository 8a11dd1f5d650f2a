package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"sort"
	"syscall"
	"testing"
	"time"

	"banger/client"
	"banger/internal/vsockagent"
)

// TestAgentVersusSSHMeasurement compares, against one VM in one run,
// banger's agent with plain ssh over the VM's network (to the agent's
// own SSH server on port 22, so the guest side is the same program):
// exec round trips (median of 50, each a new CLI or ssh process, and
// over one kept session), and stream throughput through exec's stdin
// and stdout and through a forwarded port: exec-ratio (time,
// banger/ssh), stream-ratio and forward-ratio (rate, banger/ssh). The
// rounds are inside: -benchtime 1x (bench/agent.sh checks the goals).
func BenchmarkAgentVersusSSH(b *testing.B) {
	report(b, measureAgentVersusSSH(b))
}

func measureAgentVersusSSH(t testing.TB) map[string]float64 {
	m := map[string]float64{}
	in := newInstance(t)
	vmFixtures(t, in)
	var v vmJSON
	in.jsonOut(&v, "vm", "create", "--name", "m", "--image", "bb", "--kernel", "k", "--vcpu", "2", "--memory", "512M", "--disk-size", "256M", "--vmm", "qemu", "--json")
	in.ok("ssh-config") // makes and authorizes the key
	key := in.path("ssh", "id_ed25519")
	sshArgs := func(extra ...string) []string {
		return append([]string{"--net=/run/netns/" + in.netns, "ssh", "-i", key, "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
			"-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"}, extra...)
	}
	median := func(f func() error) time.Duration {
		var ds []time.Duration
		for i := 0; i < 50; i++ {
			start := time.Now()
			if err := f(); err != nil {
				t.Fatal(err)
			}
			ds = append(ds, time.Since(start))
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)/2]
	}
	cliExec := median(func() error { return in.cli("vm", "exec", "m", "--", "true").Run() })
	sshExec := median(func() error {
		out, err := exec.Command("nsenter", sshArgs("root@"+v.IP, "true")...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ssh: %v %s", err, out)
		}
		return nil
	})
	c := client.New(in.path("run", "bangerd.sock"))
	s, err := c.Agent(context.Background(), "m")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sessionExec := median(func() error {
		st, err := s.Open(context.Background(), vsockagent.Request{Op: "exec", Argv: []string{"true"}})
		if err != nil {
			return err
		}
		st.CloseWrite()
		_, err = st.Wait(context.Background())
		return err
	})
	t.Logf("exec round trip, median of 50: banger vm exec %s, ssh %s (banger/ssh %.2f); over one agent session %s",
		cliExec.Round(time.Millisecond), sshExec.Round(time.Millisecond), float64(cliExec)/float64(sshExec), sessionExec.Round(100*time.Microsecond))
	m["exec-ratio"], m["exec-ms"], m["session-exec-ms"] = float64(cliExec)/float64(sshExec), ms(cliExec), ms(sessionExec)

	// Throughput: 32 MiB through cat and back.
	const size = 32 << 20
	through := func(cmd *exec.Cmd) float64 {
		cmd.Stdin = io.LimitReader(zeros{}, size)
		var n countWriter
		cmd.Stdout = &n
		start := time.Now()
		if err := cmd.Run(); err != nil || n != size {
			t.Fatalf("%v: %v, %d bytes", cmd.Args, err, n)
		}
		return float64(size) / (1 << 20) / time.Since(start).Seconds()
	}
	agentMBs := through(in.cli("vm", "exec", "-i", "m", "--", "cat"))
	sshMBs := through(exec.Command("nsenter", sshArgs("root@"+v.IP, "cat")...))
	t.Logf("exec stdin→stdout, 32 MiB: banger %.1f MiB/s, ssh %.1f MiB/s (banger/ssh %.2f)", agentMBs, sshMBs, agentMBs/sshMBs)
	m["stream-ratio"] = agentMBs / sshMBs

	// A forwarded port to an echo server in the guest.
	in.ok("vm", "exec", "m", "--", "sh", "-c", "busybox nc -ll -p 9000 -e /bin/cat </dev/null >/dev/null 2>&1 &")
	time.Sleep(500 * time.Millisecond)
	fwd := in.cli("vm", "forward", "m", "19000:9000")
	fwdErr, _ := fwd.StderrPipe()
	fwd.Start()
	defer func() { fwd.Process.Signal(syscall.SIGINT); fwd.Wait() }()
	bufio.NewReader(fwdErr).ReadString('\n')
	tunnel := exec.Command("nsenter", sshArgs("-N", "-L", "19001:127.0.0.1:9000", "root@"+v.IP)...)
	tunnel.Start()
	defer func() { tunnel.Process.Kill(); tunnel.Wait() }()
	echoMBs := func(addr string, inNS bool) float64 {
		var conn net.Conn
		var err error
		for i := 0; i < 50; i++ {
			if inNS {
				err = in.inNS(func() (err error) { conn, err = net.Dial("tcp", addr); return })
			} else {
				conn, err = net.Dial("tcp", addr)
			}
			if err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		go func() { io.Copy(conn, io.LimitReader(zeros{}, size/4)); conn.(*net.TCPConn).CloseWrite() }()
		n, _ := io.Copy(io.Discard, conn)
		if n != size/4 {
			t.Fatalf("echo through %s: %d bytes back", addr, n)
		}
		return float64(size/4) / (1 << 20) / time.Since(start).Seconds()
	}
	fwdMBs := echoMBs("127.0.0.1:19000", false)
	sshFwdMBs := echoMBs("127.0.0.1:19001", true)
	t.Logf("forwarded port, 8 MiB echoed: banger vm forward %.1f MiB/s, ssh -L %.1f MiB/s (banger/ssh %.2f)", fwdMBs, sshFwdMBs, fwdMBs/sshFwdMBs)
	m["forward-ratio"] = fwdMBs / sshFwdMBs
	return m
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

type countWriter int

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}
