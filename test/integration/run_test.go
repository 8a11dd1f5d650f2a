package integration

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"banger/internal/imagepull/imagetest"
	"banger/internal/testenv"
)

// TestVMRunAsANewUser is banger as a new user meets it: a config file
// with the defaults, one command that runs something and exits with its
// status, --rm leaving nothing, config show saying where each value came
// from, and a config mistake reported by file and line.
func TestVMRunAsANewUser(t *testing.T) {
	in := newInstance(t)
	os.WriteFile(in.path("config.toml"), []byte("default_image = \"bb\"\ndefault_kernel = \"k\"\nvcpu = 1\nmemory = \"256M\"\ndisk_size = \"128M\"\nnetwork = \"none\"\nvmm = \"qemu\"\n"), 0o644)
	vmFixtures(t, in)

	code, out, stderr := in.code(nil, "vm", "run", "--rm", "--", "sh", "-c", "echo hi; exit 3")
	if code != 3 || out != "hi\n" {
		t.Errorf("vm run -- sh -c 'echo hi; exit 3': exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if !strings.Contains(stderr, "from bb, kernel k, 1 vCPU, 256M memory, 128M disk, network none") {
		t.Errorf("the spec line is missing: %q", stderr)
	}
	var list []vmJSON
	in.jsonOut(&list, "vm", "ls", "--json")
	if len(list) != 0 {
		t.Errorf("--rm left VMs: %+v", list)
	}
	if dirs, _ := os.ReadDir(in.path("state", "vms")); len(dirs) != 0 {
		t.Errorf("--rm left VM directories: %v", dirs)
	}

	show := in.ok("config", "show")
	for _, want := range []string{`default_image = "bb"`, in.path("config.toml") + ":1", `vcpu = "1"`, in.path("config.toml") + ":3", `net.bridge = "banger0"`, "# default"} {
		if !strings.Contains(show, want) {
			t.Errorf("config show lacks %q:\n%s", want, show)
		}
	}

	// doctor, checked against what this machine is.
	var checks []struct{ Name, Status, Detail, Fix string }
	in.jsonOut(&checks, "doctor", "--json")
	want := map[string]string{"daemon": "PASS", "versions": "PASS", "qemu": "PASS", "e2fsprogs": "PASS", "nftables": "PASS",
		"bridge": "PASS", "dns": "PASS", "default image": "PASS", "default kernel": "PASS", "jailer": "PASS", ".vm names": "PASS",
		"image build": "PASS", "archive keys": "PASS", "virtiofsd": "PASS", "guest RAM": "PASS"}
	// What this machine is, read from the machine here, not from
	// qemu.Probe, which doctor itself asks: /dev/kvm that opens and is
	// not kvm_pvm's (which runs only PVM guest kernels) passes.
	wantKVM := "no /dev/kvm"
	want["kvm"] = "WARN"
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		wantKVM = "kvm_pvm"
	} else if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		want["kvm"], wantKVM = "PASS", "runs guests"
	} else if _, err := os.Stat("/dev/kvm"); err == nil {
		wantKVM = "cannot be opened"
	}
	want["firecracker"] = "WARN"
	if _, err := exec.LookPath("firecracker"); err == nil {
		want["firecracker"] = "PASS"
	}
	got := map[string]string{}
	for _, c := range checks {
		got[c.Name] = c.Status
		if c.Name == "kvm" && !strings.Contains(c.Detail, wantKVM) {
			t.Errorf("doctor kvm says %q, want it to say %q", c.Detail, wantKVM)
		}
		if c.Status != "PASS" && c.Fix == "" {
			t.Errorf("doctor %s is %s without a fix", c.Name, c.Status)
		}
	}
	for name, status := range want {
		if got[name] != status {
			t.Errorf("doctor %s = %q, want %s (%+v)", name, got[name], status, checks)
		}
	}

	// -d leaves it running and names it.
	name := strings.TrimSpace(in.ok("vm", "run", "-d", "--name", "bg1"))
	if name != "bg1" {
		t.Errorf("vm run -d printed %q", name)
	}
	// Completion of live names, as the shells ask for it.
	for args, want := range map[string]string{"vm exec": "bg1\n", "vm rm": "bg1\n", "vm cp": "bg1:\n", "image rm": "bb\n", "kernel show": "k\n"} {
		if out := in.ok(append(append([]string{"__complete"}, strings.Fields(args)...), "")...); !strings.Contains(out, want) {
			t.Errorf("completion of `banger %s`: %q, want %q in it", args, out, want)
		}
	}
	in.ok("vm", "rm", "-f", "bg1")

	// A mistake in the config stops the daemon with its line.
	in.ok("daemon", "stop")
	os.WriteFile(in.path("config.toml"), []byte("vcpu = 1\nmemory = \"plenty\"\n"), 0o644)
	in.fails("config.toml:2: memory", "vm", "ls")
	os.Remove(in.path("config.toml"))
}

// TestVMRunInteractiveShell drives `banger vm run --rm` on a
// pseudo-terminal: a prompt, a command, exit back to the host.
func TestVMRunInteractiveShell(t *testing.T) {
	in := newInstance(t)
	vmFixtures(t, in)
	cmd := in.cli("vm", "run", "--rm", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--network", "none", "--vmm", "qemu")
	f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 30, Cols: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	screen := &syncBuffer{}
	go func() {
		r := bufio.NewReader(f)
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			screen.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	waitFor := func(s string, d time.Duration) bool {
		for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if strings.Contains(screen.String(), s) {
				return true
			}
		}
		return false
	}
	if !waitFor("# ", 90*time.Second) {
		t.Fatalf("no shell prompt:\n%s", screen.String())
	}
	f.Write([]byte("echo answer-$((40+2)); stty size\r"))
	if !waitFor("answer-42", 20*time.Second) || !waitFor("30 100", 5*time.Second) {
		t.Fatalf("the command did not run in the terminal:\n%s", screen.String())
	}
	f.Write([]byte("exit\r"))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("banger vm run ended with %v:\n%s", err, screen.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("exit did not return to the host:\n%s", screen.String())
	}
	var list []vmJSON
	in.jsonOut(&list, "vm", "ls", "--json")
	if len(list) != 0 {
		t.Errorf("--rm left VMs after the shell: %+v", list)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// debianImage pulls the Debian fixture (systemd, git) into the instance
// as "deb".
func debianImage(t testing.TB, in *instance) {
	t.Helper()
	dir := testenv.Fixture(t, testenv.DebianRoot, "a debootstrap --variant=minbase --include=systemd,systemd-sysv,git directory (scripts/vm-fixtures.sh)")
	var raw bytes.Buffer
	tarCmd := exec.Command("tar", "--numeric-owner", "--xattrs", "-C", dir, "-cf", "-", ".")
	tarCmd.Stdout = &raw
	if err := tarCmd.Run(); err != nil {
		t.Fatal(err)
	}
	reg := imagetest.StartRegistry(t)
	ref := reg.Push(t, "test/debian:bookworm", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{raw.Bytes()}, GzipLevel: gzip.BestSpeed}))
	in.ok("image", "pull", "-q", ref, "--name", "deb")
}

// TestVMRunWorkspace copies a git repository into a VM: tracked files
// with their modes, never ignored ones, untracked ones only when asked,
// git status clean inside; and changes come back as a patch.
func TestVMRunWorkspace(t *testing.T) {
	testenv.RequireBinary(t, "git", "apt-get install git")
	in := newInstance(t)
	vmFixtures(t, in)
	debianImage(t, in)
	repo := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", repo}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	git("init", "-q")
	os.WriteFile(filepath.Join(repo, "a.txt"), []byte("alpha\n"), 0o644)
	os.MkdirAll(filepath.Join(repo, "sub"), 0o755)
	os.WriteFile(filepath.Join(repo, "sub", "b.sh"), []byte("#!/bin/sh\necho b\n"), 0o755)
	os.WriteFile(filepath.Join(repo, ".gitignore"), []byte("*.log\n"), 0o644)
	git("add", ".")
	git("commit", "-q", "-m", "one")
	os.WriteFile(filepath.Join(repo, "ignored.log"), []byte("secret\n"), 0o644)
	os.WriteFile(filepath.Join(repo, "untracked.txt"), []byte("u\n"), 0o644)

	base := []string{"vm", "run", repo, "--image", "deb", "--kernel", "k", "--vcpu", "2", "--memory", "512M", "--disk-size", "256M", "--network", "none", "--vmm", "qemu"}
	code, out, stderr := in.code(nil, append(base, "--rm", "--", "sh", "-c", "pwd; ls -A | sort | tr '\\n' ' '; echo; git status --porcelain; test -x sub/b.sh && echo exec-ok")...)
	if code != 0 || out != "/root/repo\n.git .gitignore a.txt sub \nexec-ok\n" {
		t.Errorf("workspace: exit %d\n%s\nstderr: %s", code, out, stderr)
	}
	code, out, _ = in.code(nil, append(base, "--rm", "--include-untracked", "--", "sh", "-c", "ls -A | sort | tr '\\n' ' '")...)
	if code != 0 || out != ".git .gitignore a.txt sub untracked.txt " {
		t.Errorf("--include-untracked: %d %q", code, out)
	}

	// Work in the VM, then bring it back as a patch.
	in.ok(append(base, "-d", "--name", "ws")...)
	in.ok("vm", "exec", "ws", "-w", "/root/repo", "--", "sh", "-c", "echo beta >> a.txt; echo new > new.txt")
	patch := filepath.Join(t.TempDir(), "ws.patch")
	in.ok("vm", "workspace", "export", "ws", "-o", patch)
	p, _ := os.ReadFile(patch)
	if !strings.Contains(string(p), "+beta") || !strings.Contains(string(p), "new.txt") {
		t.Errorf("patch:\n%s", p)
	}
	git("apply", "--check", patch)
	in.ok("vm", "rm", "-f", "ws")
}

// TestSystemInstall writes the service below a prefix (nothing is
// started there): the unit keeps VMs alive across daemon restarts, the
// group and directories exist, and uninstall --purge takes them away.
func TestSystemInstall(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	prefix := t.TempDir()
	os.MkdirAll(filepath.Join(prefix, "etc"), 0o755)
	for _, f := range []string{"group", "gshadow"} {
		b, _ := os.ReadFile("/etc/" + f)
		os.WriteFile(filepath.Join(prefix, "etc", f), b, 0o640)
	}
	out := in.ok("system", "install", "--prefix", prefix)
	unit, err := os.ReadFile(filepath.Join(prefix, "etc/systemd/system/bangerd.service"))
	if err != nil || !strings.Contains(string(unit), "ExecStart="+filepath.Join(binDir, "bangerd")) || !strings.Contains(string(unit), "KillMode=process") {
		t.Errorf("unit:\n%s (%v)\n%s", unit, err, out)
	}
	if g, _ := os.ReadFile(filepath.Join(prefix, "etc/group")); !strings.Contains(string(g), "\nbanger:") {
		t.Errorf("no banger group in the prefix")
	}
	for _, d := range []string{"var/lib/banger", "var/cache/banger", "run/banger"} {
		if fi, err := os.Stat(filepath.Join(prefix, d)); err != nil || !fi.IsDir() {
			t.Errorf("%s: %v", d, err)
		}
	}
	in.ok("system", "install", "--prefix", prefix) // again: nothing breaks
	in.ok("system", "uninstall", "--purge", "--prefix", prefix)
	if _, err := os.Stat(filepath.Join(prefix, "etc/systemd/system/bangerd.service")); !os.IsNotExist(err) {
		t.Errorf("unit left after uninstall")
	}
	if g, _ := os.ReadFile(filepath.Join(prefix, "etc/group")); strings.Contains(string(g), "\nbanger:") {
		t.Errorf("group left after --purge")
	}
	if _, err := os.Stat(filepath.Join(prefix, "var/lib/banger")); !os.IsNotExist(err) {
		t.Errorf("state left after --purge")
	}
}
