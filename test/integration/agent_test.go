package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/client"
	"banger/internal/testenv"
	"banger/internal/vsockagent"
)

// cli starts the banger CLI as a process of the instance.
func (in *instance) cli(args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(binDir, "banger"), args...)
	cmd.Env = in.env
	return cmd
}

// code runs the CLI and returns its exit status.
func (in *instance) code(stdin io.Reader, args ...string) (int, string, string) {
	in.t.Helper()
	cmd := in.cli(args...)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String(), errb.String()
	}
	if err != nil {
		in.t.Fatal(err)
	}
	return 0, out.String(), errb.String()
}

func TestAgentExecCopyPortsForward(t *testing.T) {
	testenv.RequireBinary(t, "ssh", "apt-get install openssh-client")
	testenv.RequireBinary(t, "sftp", "apt-get install openssh-client")
	in := newInstance(t)
	vmFixtures(t, in)
	in.ok("vm", "create", "--name", "ag", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--network", "none")

	// Exit statuses pass through.
	for _, c := range []struct {
		args []string
		want int
	}{{[]string{"true"}, 0}, {[]string{"sh", "-c", "exit 1"}, 1}, {[]string{"sh", "-c", "kill -9 $$"}, 137}, {[]string{"sh", "-c", "exit 42"}, 42}} {
		if got, _, stderr := in.code(nil, append([]string{"vm", "exec", "ag", "--"}, c.args...)...); got != c.want {
			t.Errorf("exec %v: exit %d, want %d (%s)", c.args, got, c.want, stderr)
		}
	}
	if code, _, stderr := in.code(nil, "vm", "exec", "ag", "--", "no-such-thing"); code == 0 || !strings.Contains(stderr, "command not found") {
		t.Errorf("missing command: %d %q", code, stderr)
	}
	// 10 MiB through stdin, checksummed in the guest.
	data := make([]byte, 10<<20)
	rand.Read(data)
	sum := sha256.Sum256(data)
	code, out, stderr := in.code(bytes.NewReader(data), "vm", "exec", "-i", "ag", "--", "busybox", "sha256sum")
	if code != 0 || !strings.HasPrefix(out, fmt.Sprintf("%x", sum)) {
		t.Errorf("sha256sum of 10 MiB of stdin: %d %q %q", code, out, stderr)
	}
	// Separate stdout and stderr.
	if code, out, stderr := in.code(nil, "vm", "exec", "ag", "--", "sh", "-c", "echo to-out; echo to-err >&2"); code != 0 || out != "to-out\n" || stderr != "to-err\n" {
		t.Errorf("streams: %d %q %q", code, out, stderr)
	}

	// Ctrl-C reaches the guest's command.
	cmd := in.cli("vm", "exec", "ag", "--", "sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	began := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 || time.Since(began) > 5*time.Second {
		t.Errorf("Ctrl-C on sleep 30: %v after %s", err, time.Since(began))
	}

	// A terminal: its size, and a resize.
	c := client.New(in.path("run", "bangerd.sock"))
	s, err := c.Agent(context.Background(), "ag")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if p := s.Peer(); p.Image != "bb" || p.Hostname != "ag" || p.Agent == "" || p.UptimeMs <= 0 {
		t.Errorf("agent hello = %+v", p)
	}
	st, err := s.Open(context.Background(), vsockagent.Request{Op: "exec", TTY: true, Rows: 33, Cols: 91,
		Argv: []string{"sh", "-c", "busybox tty; busybox stty size; read x; busybox stty size"}})
	if err != nil {
		t.Fatal(err)
	}
	var tout bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&tout, st); close(done) }()
	time.Sleep(700 * time.Millisecond)
	st.Resize(vsockagent.Winsize{Rows: 44, Cols: 120})
	time.Sleep(200 * time.Millisecond)
	st.Write([]byte("\n"))
	if e, err := st.Wait(context.Background()); err != nil || e.Code != 0 {
		t.Errorf("pty exec: %+v %v", e, err)
	}
	<-done
	if got := strings.ReplaceAll(tout.String(), "\r", ""); !strings.Contains(got, "/dev/pts/") || !strings.Contains(got, "33 91\n") || !strings.Contains(got, "44 120\n") {
		t.Errorf("pty output %q", got)
	}

	// cp of a tree both ways keeps modes.
	src := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(src, "bin"), 0o750)
	os.WriteFile(filepath.Join(src, "bin", "tool"), []byte("#!/bin/sh\necho tool ran\n"), 0o755)
	os.WriteFile(filepath.Join(src, "secret"), []byte("shh"), 0o600)
	os.Symlink("bin/tool", filepath.Join(src, "link"))
	in.ok("vm", "exec", "ag", "--", "mkdir", "-p", "/root")
	in.ok("vm", "cp", src, "ag:/root")
	if code, out, _ := in.code(nil, "vm", "exec", "ag", "--", "sh", "-c", "/root/tree/link; busybox stat -c '%a %n' /root/tree/secret /root/tree/bin"); code != 0 || out != "tool ran\n600 /root/tree/secret\n750 /root/tree/bin\n" {
		t.Errorf("tree in the guest: %d %q", code, out)
	}
	back := t.TempDir()
	in.ok("vm", "cp", "ag:/root/tree", filepath.Join(back, "again"))
	for rel, mode := range map[string]os.FileMode{"bin/tool": 0o755, "secret": 0o600, "bin": os.ModeDir | 0o750} {
		if fi, err := os.Stat(filepath.Join(back, "again", rel)); err != nil || fi.Mode() != mode {
			t.Errorf("copied back %s: %v %v", rel, fi.Mode(), err)
		}
	}
	in.fails("no such file", "vm", "cp", "ag:/nope", back)

	// What the guest writes to its console reaches the user's terminal
	// without its escape sequences (a window title, a colour), unless
	// they ask for the raw bytes.
	in.ok("vm", "exec", "ag", "--", "sh", "-c", `printf 'ESC-TEST\033]0;pwned\007\033[31mRED\001\n' > /dev/console`)
	var logs string
	for i := 0; i < 50 && !strings.Contains(logs, "ESC-TEST"); i++ {
		logs = in.ok("vm", "logs", "ag")
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(logs, `ESC-TESTRED\x01`) || strings.ContainsAny(logs, "\x1b\x07\x01") {
		t.Errorf("vm logs passed the guest's escape sequences on: %q", logs[max(0, strings.Index(logs, "ESC-TEST")-10):])
	}
	if raw := in.ok("vm", "logs", "ag", "--raw"); !strings.Contains(raw, "ESC-TEST\x1b]0;pwned\x07\x1b[31mRED") {
		t.Errorf("vm logs --raw changed the console's bytes")
	}

	// A listening port is found and forwarded from localhost.
	in.ok("vm", "exec", "ag", "--", "sh", "-c", "busybox nc -ll -p 8080 -e /bin/cat </dev/null >/dev/null 2>&1 &")
	var ports []vsockagent.Port
	for i := 0; i < 50; i++ {
		in.jsonOut(&ports, "vm", "ports", "ag", "--json")
		if hasPort(ports, 8080) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !hasPort(ports, 8080) {
		t.Fatalf("port 8080 not listed: %+v", ports)
	}
	fwd := in.cli("vm", "forward", "ag", "18090:8080")
	fwdErr, _ := fwd.StderrPipe()
	if err := fwd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { fwd.Process.Signal(syscall.SIGINT); fwd.Wait() }()
	if line, _ := bufio.NewReader(fwdErr).ReadString('\n'); !strings.Contains(line, "127.0.0.1:18090") {
		t.Fatalf("forward said %q", line)
	}
	if err := echoOnce("127.0.0.1:18090", "echo through the agent"); err != nil {
		t.Error(err)
	}

	// --auto-forward picks up a port that starts listening later, on
	// loopback only (whatever --address says), and never takes a port a
	// host service listens on.
	hostSvc, err := net.Listen("tcp", "127.0.0.1:18732")
	if err != nil {
		t.Fatal(err)
	}
	defer hostSvc.Close()
	go func() {
		for {
			c, err := hostSvc.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "host service\n")
			c.Close()
		}
	}()
	auto := in.cli("vm", "forward", "ag", "--auto-forward", "--address", "0.0.0.0")
	autoErr, _ := auto.StderrPipe()
	if err := auto.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { auto.Process.Signal(syscall.SIGINT); auto.Wait() }()
	in.ok("vm", "exec", "ag", "--", "sh", "-c", "busybox nc -ll -p 18731 -e /bin/cat </dev/null >/dev/null 2>&1 & busybox nc -ll -p 18732 -e /bin/cat </dev/null >/dev/null 2>&1 &")
	lines := bufio.NewScanner(autoErr)
	var forwarded, refused string
	for deadline := time.Now().Add(15 * time.Second); (forwarded == "" || refused == "") && time.Now().Before(deadline) && lines.Scan(); {
		switch l := lines.Text(); {
		case strings.Contains(l, "guest port 18731"):
			forwarded = l
		case strings.Contains(l, "18732"):
			refused = l
		}
	}
	if !strings.Contains(forwarded, "127.0.0.1:18731") {
		t.Fatalf("--auto-forward did not pick up port 18731 on loopback: %q", forwarded)
	}
	if !strings.Contains(refused, "port 18732 is in use on this host") {
		t.Errorf("--auto-forward on a port the host uses: %q", refused)
	}
	go io.Copy(io.Discard, autoErr)
	if err := echoOnce("127.0.0.1:18731", "auto forwarded"); err != nil {
		t.Error(err)
	}
	if c, err := net.Dial("tcp", "127.0.0.1:18732"); err != nil {
		t.Error(err)
	} else {
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if line != "host service\n" {
			t.Errorf("the host's own port 18732 answered %q: the guest took it over", line)
		}
	}

	// SSH: the stanza from ssh-config, plain ssh with exit statuses, and
	// sftp put and get, all through the agent (this VM has no network).
	conf := filepath.Join(t.TempDir(), "ssh_config")
	os.WriteFile(conf, []byte(in.ok("ssh-config")), 0o644)
	ssh := func(args ...string) (int, string, string) {
		cmd := exec.Command("ssh", append([]string{"-F", conf, "-o", "BatchMode=yes", "ag.vm"}, args...)...)
		cmd.Env = in.env
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), out.String(), errb.String()
		}
		return 0, out.String(), errb.String()
	}
	if code, out, stderr := ssh("echo", "hello over ssh"); code != 0 || out != "hello over ssh\n" {
		t.Errorf("ssh echo: %d %q %q", code, out, stderr)
	}
	if code, _, _ := ssh("exit", "3"); code != 3 {
		t.Errorf("ssh exit 3: %d", code)
	}
	local := filepath.Join(t.TempDir(), "up.bin")
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	os.WriteFile(local, payload, 0o640)
	batch := filepath.Join(t.TempDir(), "batch")
	os.WriteFile(batch, []byte("put "+local+" /root/up.bin\nget /root/up.bin "+local+".back\n"), 0o644)
	sftp := exec.Command("sftp", "-F", conf, "-b", batch, "ag.vm")
	sftp.Env = in.env
	if out, err := sftp.CombinedOutput(); err != nil {
		t.Errorf("sftp: %v\n%s", err, out)
	} else if back, _ := os.ReadFile(local + ".back"); !bytes.Equal(back, payload) {
		t.Errorf("sftp round trip changed the file (%d bytes back)", len(back))
	}

	// A write survives a graceful stop (through the agent) and a start.
	in.ok("vm", "exec", "ag", "--", "sh", "-c", "echo persisted > /root/mark")
	began = time.Now()
	in.ok("vm", "stop", "ag")
	stopTook := time.Since(began)
	in.ok("vm", "start", "ag")
	if code, out, _ := in.code(nil, "vm", "exec", "ag", "--", "cat", "/root/mark"); code != 0 || out != "persisted\n" {
		t.Errorf("after stop and start: %d %q", code, out)
	}
	if stopTook > 10*time.Second {
		t.Errorf("graceful stop took %s", stopTook)
	}
	in.ok("vm", "rm", "-f", "ag")
	in.fails("not found", "vm", "exec", "ag", "--", "true")
}

func hasPort(ports []vsockagent.Port, port int) bool {
	for _, p := range ports {
		if p.Port == port && strings.HasPrefix(p.Proto, "tcp") {
			return true
		}
	}
	return false
}

// TestAgentOnSystemdImage runs the agent as the systemd service it is on
// images with systemd: exec as root and as another user, ssh, and a
// graceful stop through the agent (systemd's own poweroff) that keeps
// what was written.
func TestAgentOnSystemdImage(t *testing.T) {
	testenv.RequireBinary(t, "ssh", "apt-get install openssh-client")
	in := newInstance(t)
	vmFixtures(t, in)
	debianImage(t, in)
	in.ok("vm", "create", "--name", "sd", "--image", "deb", "--kernel", "k", "--vcpu", "2", "--memory", "512M", "--disk-size", "256M", "--vmm", "qemu", "--network", "none")

	code, out, stderr := in.code(nil, "vm", "exec", "sd", "--", "sh", "-c", "cat /proc/1/comm; id -un; systemctl is-active banger-vsock-agent.service")
	if code != 0 || out != "systemd\nroot\nactive\n" {
		t.Errorf("exec on systemd: %d %q %q", code, out, stderr)
	}
	if code, out, _ := in.code(nil, "vm", "exec", "-u", "nobody", "sd", "--", "id", "-un"); code != 0 || out != "nobody\n" {
		t.Errorf("exec -u nobody: %d %q", code, out)
	}
	conf := filepath.Join(t.TempDir(), "ssh_config")
	os.WriteFile(conf, []byte(in.ok("ssh-config")), 0o644)
	sshCmd := exec.Command("ssh", "-F", conf, "-o", "BatchMode=yes", "sd.vm", "cat", "/etc/debian_version")
	sshCmd.Env = in.env
	if out, err := sshCmd.CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "12") {
		t.Errorf("ssh to the systemd VM: %v %q", err, out)
	}
	in.ok("vm", "exec", "sd", "--", "sh", "-c", "echo kept > /root/mark")
	// Graceful: systemd powers the guest off (the kernel's last line),
	// before the 30 s after which a stop falls back to a kill.
	began := time.Now()
	in.ok("vm", "stop", "sd")
	if took := time.Since(began); took >= 30*time.Second {
		t.Errorf("graceful stop of a systemd VM took %s: the kill at 30 s, not the guest, ended it", took)
	}
	if logs := in.ok("vm", "logs", "sd"); !strings.Contains(logs, "reboot: Power down") {
		t.Errorf("the systemd guest did not power itself off; console:\n%s", tailLines(logs, 20))
	}
	in.ok("vm", "start", "sd")
	if code, out, _ := in.code(nil, "vm", "exec", "sd", "--", "cat", "/root/mark"); code != 0 || out != "kept\n" {
		t.Errorf("after stop and start: %d %q", code, out)
	}
	in.ok("vm", "rm", "-f", "sd")
}

// echoOnce sends a line to an echo server and checks it comes back.
func echoOnce(addr, msg string) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Fprintln(conn, msg)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line != msg+"\n" {
		return fmt.Errorf("echo through %s: %q %v", addr, line, err)
	}
	return nil
}

// tailLines is the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
