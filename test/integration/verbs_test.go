package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"banger/internal/testenv"
)

// freePort is a TCP port nothing on the host listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitOut waits until buf holds s.
func waitOut(buf *syncBuffer, s string, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if strings.Contains(buf.String(), s) {
			return true
		}
	}
	return false
}

// TestVMVerbs is one VM through the README's verbs that had no test:
// exec -t -e --timeout from the CLI, -p 0.0.0.0:H:G, vm ssh,
// ssh-config --install, a client without the key refused, ssh -L, vm cp
// out of a hostile tree, vm logs -f, vm shell, vm restart and vm kill.
func TestVMVerbs(t *testing.T) {
	testenv.RequireRoot(t) // a network for -p, setuid and owners for cp
	testenv.RequireBinary(t, "ssh", "apt-get install openssh-client")
	testenv.RequireBinary(t, "ssh-keygen", "apt-get install openssh-client")
	in := newInstance(t)
	vmFixtures(t, in)
	anyAddr, loopback := freePort(t), freePort(t)
	var v vmJSON
	in.jsonOut(&v, "vm", "create", "--name", "rv", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu",
		"-p", fmt.Sprintf("0.0.0.0:%d:80", anyAddr), "-p", fmt.Sprintf("%d:80", loopback), "--json")
	in.ok("vm", "exec", "rv", "--", "sh", "-c", "busybox nc -ll -p 80 -e /bin/cat </dev/null >/dev/null 2>&1 &")

	t.Run("exec -t -e --timeout", func(t *testing.T) {
		in := in.with(t)
		// -t wants a terminal on standard input, as a user has.
		cmd := in.cli("vm", "exec", "-t", "-e", "GREETING=hello-env", "--timeout", "3s", "rv", "--", "sh", "-c", "busybox tty; echo $GREETING; sleep 60")
		began := time.Now()
		screen, code := onTerminal(t, cmd, nil, time.Minute)
		took := time.Since(began)
		if code != 137 || !strings.Contains(screen, "killed after --timeout") || took > 30*time.Second {
			t.Errorf("--timeout 3s on sleep 60: exit %d after %s; want 137 and the reason:\n%s", code, took.Round(time.Millisecond), screen)
		}
		if !strings.Contains(screen, "/dev/pts/") || !strings.Contains(screen, "hello-env\r\n") {
			t.Errorf("-t -e: the guest printed %q, want a terminal and the variable", screen)
		}
	})

	t.Run("-p 0.0.0.0", func(t *testing.T) {
		in := in.with(t)
		var shown vmJSON
		in.jsonOut(&shown, "vm", "show", "rv", "--json")
		if strings.Join(shown.Ports, " ") != fmt.Sprintf("0.0.0.0:%d:80/tcp 127.0.0.1:%d:80/tcp", anyAddr, loopback) {
			t.Errorf("ports = %v", shown.Ports)
		}
		// An address of the host outside 127.0.0.0/8 and outside the VM
		// network (whose own traffic to the host the egress rules judge):
		// only the port published on every address answers there.
		testenv.IP(t, "-n", in.netns, "addr", "add", "192.0.2.1/32", "dev", "lo")
		other := "192.0.2.1"
		if err := in.echoes(fmt.Sprintf("%s:%d", other, anyAddr), "to every address"); err != nil {
			t.Errorf("-p 0.0.0.0:%d:80 from %s: %v", anyAddr, other, err)
		}
		if err := in.echoes(fmt.Sprintf("127.0.0.1:%d", anyAddr), "to loopback too"); err != nil {
			t.Errorf("-p 0.0.0.0:%d:80 from loopback: %v", anyAddr, err)
		}
		if c, err := in.dial(fmt.Sprintf("%s:%d", other, loopback)); err == nil {
			c.Close()
			t.Errorf("-p %d:80 answers on %s: published beyond loopback", loopback, other)
		}
		if err := in.echoes(fmt.Sprintf("127.0.0.1:%d", loopback), "loopback only"); err != nil {
			t.Errorf("-p %d:80 from loopback: %v", loopback, err)
		}
	})

	t.Run("ssh", func(t *testing.T) {
		in := in.with(t)
		if code, out, stderr := in.code(nil, "vm", "ssh", "rv", "--", "echo", "via vm ssh"); code != 0 || out != "via vm ssh\n" {
			t.Errorf("vm ssh -- echo: %d %q %q", code, out, stderr)
		}
		// ssh joins the words into one command line, as ssh does.
		if code, _, _ := in.code(nil, "vm", "ssh", "rv", "--", "exit 7"); code != 7 {
			t.Errorf("vm ssh -- exit 7: %d", code)
		}
		// --install: the stanza in banger's SSH directory, included once at
		// the top of ~/.ssh/config, what was there kept.
		home := t.TempDir()
		os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
		userConf := filepath.Join(home, ".ssh", "config")
		os.WriteFile(userConf, []byte("Host example\n    User someone\n"), 0o600)
		for range 2 {
			if r := in.runEnv([]string{"HOME=" + home}, "ssh-config", "--install"); r.code != 0 || !strings.Contains(r.stdout, "included it from "+userConf) {
				t.Fatalf("ssh-config --install: %d %q %q", r.code, r.stdout, r.stderr)
			}
		}
		b, _ := os.ReadFile(userConf)
		if !strings.HasPrefix(string(b), "Include ") || strings.Count(string(b), "Include ") != 1 || !strings.HasSuffix(string(b), "Host example\n    User someone\n") {
			t.Errorf("~/.ssh/config after two installs:\n%s", b)
		}
		ssh := func(args ...string) (int, string, string) {
			cmd := exec.Command("ssh", append([]string{"-F", userConf, "-o", "BatchMode=yes"}, args...)...)
			cmd.Env = append(append([]string{}, in.env...), "HOME="+home)
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			err := cmd.Run()
			if ee, ok := err.(*exec.ExitError); ok {
				return ee.ExitCode(), out.String(), errb.String()
			}
			return 0, out.String(), errb.String()
		}
		if code, out, stderr := ssh("rv.vm", "echo", "through the installed config"); code != 0 || out != "through the installed config\n" {
			t.Errorf("ssh rv.vm with the installed config: %d %q %q", code, out, stderr)
		}
		// A client without banger's key is refused: the same route, another key.
		stanza := in.ok("ssh-config")
		var proxy string
		for _, l := range strings.Split(stanza, "\n") {
			if k, val, _ := strings.Cut(strings.TrimSpace(l), " "); k == "ProxyCommand" {
				proxy = val
			}
		}
		stranger := filepath.Join(t.TempDir(), "id_stranger")
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", stranger).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v %s", err, out)
		}
		code, _, stderr := ssh("-F", "/dev/null", "-o", "ProxyCommand="+proxy, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
			"-o", "IdentitiesOnly=yes", "-i", stranger, "root@rv.vm", "echo", "let in")
		if code != 255 || !strings.Contains(stderr, "Permission denied (publickey)") {
			t.Errorf("a stranger's key: exit %d %q, want refused", code, stderr)
		}
		// ssh -L: a local port through ssh (through the agent) to the guest.
		local := freePort(t)
		tunnel := exec.Command("ssh", "-F", userConf, "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-N", "-L", fmt.Sprintf("127.0.0.1:%d:127.0.0.1:80", local), "rv.vm")
		tunnel.Env = append(append([]string{}, in.env...), "HOME="+home)
		if err := tunnel.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { tunnel.Process.Kill(); tunnel.Wait() }()
		var err error
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if err = echoOnce(fmt.Sprintf("127.0.0.1:%d", local), "through ssh -L"); err == nil {
				break
			}
		}
		if err != nil {
			t.Errorf("ssh -L: %v", err)
		}
	})

	t.Run("cp out of a hostile tree", func(t *testing.T) {
		in := in.with(t)
		outside := t.TempDir() // where the guest's links point, on the host
		target := filepath.Join(outside, "target")
		in.ok("vm", "exec", "rv", "--", "sh", "-c", strings.Join([]string{
			"set -e", "B=busybox", "mkdir -p /root/tree/a/b/c/d/e/f/g/h/i/j",
			"echo deep > /root/tree/a/b/c/d/e/f/g/h/i/j/leaf",
			"echo mode > /root/tree/f640", "$B chmod 0640 /root/tree/f640",
			"echo suid > /root/tree/suid", "$B chmod 4755 /root/tree/suid", "$B chown 1000:1000 /root/tree/suid",
			"$B ln -s " + target + " /root/tree/out", "$B ln -s ../../.. /root/tree/up",
			"$B touch -d '2001-02-03 04:05:06' /root/tree/f640 /root/tree/suid",
			"$B chmod 0711 /root/tree/a", "$B touch -d '2002-03-04 05:06:07' /root/tree/a/b/c/d/e/f/g/h/i/j /root/tree/a",
		}, "\n"))
		// What the guest says of its tree: mode and mtime.
		guest := map[string][2]int64{}
		for _, l := range strings.Split(strings.TrimSpace(in.ok("vm", "exec", "rv", "--", "sh", "-c",
			"cd /root && busybox stat -c '%n %a %Y' tree/f640 tree/suid tree/a tree/a/b/c/d/e/f/g/h/i/j tree/a/b/c/d/e/f/g/h/i/j/leaf")), "\n") {
			f := strings.Fields(l)
			mode, _ := strconv.ParseInt(f[1], 8, 64)
			mtime, _ := strconv.ParseInt(f[2], 10, 64)
			guest[f[0]] = [2]int64{mode, mtime}
		}
		check := func(dst string, setID bool) {
			t.Helper()
			for rel, want := range guest {
				fi, err := os.Lstat(filepath.Join(dst, rel))
				if err != nil {
					t.Errorf("%s: %v", rel, err)
					continue
				}
				mode := int64(fi.Mode().Perm())
				if fi.Mode()&os.ModeSetuid != 0 {
					mode |= 0o4000
				}
				wantMode := want[0]
				if !setID {
					wantMode &^= 0o6000
				}
				if mode != wantMode || fi.ModTime().Unix() != want[1] {
					t.Errorf("%s: mode %o mtime %d, want %o %d", rel, mode, fi.ModTime().Unix(), wantMode, want[1])
				}
			}
			for link, want := range map[string]string{"tree/out": target, "tree/up": "../../.."} {
				if got, err := os.Readlink(filepath.Join(dst, link)); err != nil || got != want {
					t.Errorf("%s: link to %q (%v), want %q", link, got, err, want)
				}
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("written through a link, outside the destination: %v", ents)
			}
		}
		dst := t.TempDir()
		in.ok("vm", "cp", "rv:/root/tree", dst)
		check(dst, false)
		if fi, _ := os.Stat(filepath.Join(dst, "tree", "suid")); fi.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("copied out without --preserve-owners: owner %d, want the caller's (0)", fi.Sys().(*syscall.Stat_t).Uid)
		}
		kept := t.TempDir()
		in.ok("vm", "cp", "--preserve-owners", "rv:/root/tree", kept)
		check(kept, true)
		if fi, _ := os.Stat(filepath.Join(kept, "tree", "suid")); fi.Sys().(*syscall.Stat_t).Uid != 1000 {
			t.Errorf("--preserve-owners: owner %d, want the guest's 1000", fi.Sys().(*syscall.Stat_t).Uid)
		}
		// A destination where a directory of the copy is a link out of it:
		// refused, nothing written through the link.
		trap := t.TempDir()
		os.MkdirAll(filepath.Join(trap, "tree"), 0o755)
		os.Symlink(outside, filepath.Join(trap, "tree", "a"))
		if r := in.run("vm", "cp", "rv:/root/tree", trap); r.code == 0 {
			t.Errorf("vm cp through a link in the destination succeeded")
		}
		if ents, _ := os.ReadDir(outside); len(ents) != 0 {
			t.Errorf("vm cp wrote through the destination's link: %v", ents)
		}
	})

	t.Run("logs -f, shell, restart, kill", func(t *testing.T) {
		in := in.with(t)
		follow := in.cli("vm", "logs", "-f", "rv")
		var logs syncBuffer
		follow.Stdout = &logs
		if err := follow.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { follow.Process.Kill(); follow.Wait() }()
		in.ok("vm", "exec", "rv", "--", "sh", "-c", "echo FOLLOWED-$((6*7)) > /dev/console")
		if !waitOut(&logs, "FOLLOWED-42", 20*time.Second) {
			t.Errorf("vm logs -f did not show a new console line:\n%s", tailLines(logs.String(), 10))
		}

		// vm shell: a login shell (it reads /etc/profile) on a terminal.
		in.ok("vm", "exec", "rv", "--", "sh", "-c", "echo 'echo PROFILE-READ' > /etc/profile")
		screen, code := onTerminal(t, in.cli("vm", "shell", "rv"), []byte("echo shell-$((40+2)); stty size; exit\r"), time.Minute)
		if code != 0 || !strings.Contains(screen, "PROFILE-READ") || !strings.Contains(screen, "shell-42") || !strings.Contains(screen, "25 90") {
			t.Errorf("vm shell: exit %d\n%s", code, screen)
		}

		// restart: a new VMM, a fresh boot.
		var before, after vmJSON
		in.jsonOut(&before, "vm", "show", "rv", "--json")
		in.jsonOut(&after, "vm", "restart", "rv", "--json")
		if after.State != "running" || after.PID == before.PID || processAlive(before.PID) {
			t.Errorf("restart: %+v (old VMM %d alive: %v)", after, before.PID, processAlive(before.PID))
		}
		if up := in.guestUptime("rv"); up > 60 {
			t.Errorf("after restart the guest has been up %.0f s", up)
		}
		// kill: at once, no shutdown in the guest.
		downs := strings.Count(in.ok("vm", "logs", "rv"), "reboot: Power down")
		began := time.Now()
		var killed vmJSON
		in.jsonOut(&killed, "vm", "kill", "rv", "--json")
		if killed.State != "stopped" || killed.PID != 0 || processAlive(after.PID) || time.Since(began) > 10*time.Second {
			t.Errorf("kill: %+v after %s (VMM alive: %v)", killed, time.Since(began), processAlive(after.PID))
		}
		if n := strings.Count(in.ok("vm", "logs", "rv"), "reboot: Power down"); n != downs {
			t.Errorf("vm kill let the guest power down (%d power-downs, was %d)", n, downs)
		}
	})

	t.Run("cp from a lying agent", func(t *testing.T) {
		in := in.with(t)
		// The guest's agent replaced by one that answers copies with
		// hostile archives (testdata/liar): what a compromised guest can
		// send. The extractor refuses each, and writes nothing outside.
		liar := filepath.Join(t.TempDir(), "liar")
		_, file, _, _ := runtime.Caller(0)
		build := exec.Command("go", "build", "-o", liar, "./testdata/liar")
		build.Dir = filepath.Dir(file)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("building the liar: %v\n%s", err, out)
		}
		in.ok("vm", "start", "rv")
		in.ok("vm", "cp", liar, "rv:/liar")
		in.ok("vm", "exec", "rv", "--", "sh", "-c", "busybox setsid /liar </dev/null >/dev/console 2>&1 &")
		outside := t.TempDir()
		victim := filepath.Join(outside, "victim")
		os.WriteFile(victim, []byte("the host's own file\n"), 0o600)
		lied := false
		for _, c := range []struct{ kind, want string }{
			{"dotdot", `"tree/../../escape-dotdot" leaves the destination`},
			{"abs", "leaves the destination (an absolute path)"},
			{"link", `"tree/l/escape-link" goes through the symlink "tree/l"`},
			{"hardlink", `"tree/h" is a hard link to "` + victim + `", which is not a file this copy made`},
		} {
			kind := c.kind
			dst := filepath.Join(outside, "dst-"+kind)
			os.Mkdir(dst, 0o755)
			var r result
			// The first copies may still reach the real agent ("no such
			// file"), or the session the liar broke: it takes over a
			// second after it starts.
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
				r = in.run("vm", "cp", "rv:/case/"+kind+outside, dst)
				if r.code == 0 || strings.Contains(r.stderr, "refusing the copy") {
					break
				}
			}
			if r.code == 0 || !strings.Contains(r.stderr, c.want) || !strings.HasSuffix(r.stderr, "refusing the copy\n") {
				t.Errorf("%s: vm cp from the liar: exit %d %q, want it refused: %s", kind, r.code, r.stderr, c.want)
			} else {
				lied = true
			}
		}
		ents, _ := os.ReadDir(outside)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if strings.Join(names, " ") != "dst-abs dst-dotdot dst-hardlink dst-link victim" {
			t.Errorf("beside the destinations: %v, want nothing new", names)
		}
		if fi, err := os.Stat(victim); err != nil || fi.Sys().(*syscall.Stat_t).Nlink != 1 || fi.Mode().Perm() != 0o600 {
			t.Errorf("the host's file after a hard link to it was offered: %v %v", fi, err)
		}
		if !lied {
			t.Errorf("the liar never answered")
		}
	})
	in.ok("vm", "rm", "-f", "rv")
}

// onTerminal runs cmd on a 25x90 pseudo-terminal, types input, and
// returns what the terminal showed and the exit status once it ends.
func onTerminal(t *testing.T, cmd *exec.Cmd, input []byte, limit time.Duration) (string, int) {
	t.Helper()
	f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 25, Cols: 90})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var screen syncBuffer
	copied := make(chan struct{})
	go func() { io.Copy(&screen, bufio.NewReader(f)); close(copied) }()
	if input != nil {
		f.Write(input)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-done:
	case <-time.After(limit):
		cmd.Process.Kill()
		<-done
		t.Errorf("%v still ran after %s:\n%s", cmd.Args, limit, screen.String())
	}
	select {
	case <-copied:
	case <-time.After(2 * time.Second):
	}
	code := 0
	if ee, ok := werr.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if werr != nil {
		t.Fatal(werr)
	}
	return screen.String(), code
}
