package integration

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/testenv"
)

// TestVMRunOfflineDefault is banger as a new user meets it on a machine
// that reaches the Debian archive but no container registry: a fresh
// home and one command. Docker Hub is made unreachable for certain by an
// HTTPS proxy on a closed loopback port (the Debian archive is plain
// HTTP and verified by signature). The default image is built with
// mmdebstrap and the default kernel resolved from the archive's signed
// index; the VM prints its Debian version.
func TestVMRunOfflineDefault(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "mmdebstrap", "apt-get install mmdebstrap")
	testenv.RequireBinary(t, "gpgv", "apt-get install gpgv")
	testenv.RequireBinary(t, "qemu-system-x86_64", "apt-get install qemu-system-x86")
	in := newInstance(t)
	in.env = append(in.env, "HTTPS_PROXY=http://127.0.0.1:9", "https_proxy=http://127.0.0.1:9")

	// Two shells at once, as a new user might: one build, both VMs run.
	var wg sync.WaitGroup
	results := make([]result, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = in.runLimit(15*time.Minute, nil, "vm", "run", "--network", "none", "--rm", "--", "cat", "/etc/debian_version")
		}()
		time.Sleep(2 * time.Second) // the first one starts the daemon
	}
	wg.Wait()
	said := false
	for _, r := range results {
		if r.code != 0 || !regexp.MustCompile(`^\d+\.\d+\n$`).MatchString(r.stdout) {
			t.Fatalf("vm run: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		said = said || strings.Contains(r.stderr, "docker.io/library/debian:bookworm is unreachable") && strings.Contains(r.stderr, "building debian:bookworm from the package archive with mmdebstrap")
	}
	if !said {
		t.Errorf("vm run did not say why it builds: %q / %q", results[0].stderr, results[1].stderr)
	}
	if log, _ := os.ReadFile(in.path("state", "bangerd.log")); bytes.Count(log, []byte(`"msg":"image made","image":"debian","from":"mmdebstrap debian:bookworm"`)) != 1 {
		t.Errorf("the default image was not built exactly once:\n%s", log)
	}
	var img importJSON
	in.jsonOut(&img, "image", "show", "debian", "--json")
	if img.Source != "mmdebstrap debian:bookworm" || strings.Join(img.Config.Cmd, " ") != "/bin/bash" {
		t.Errorf("image show debian: %+v", img)
	}
	// The image has what a sandbox needs.
	r := in.runLimit(5*time.Minute, nil, "vm", "run", "--network", "none", "--rm", "--", "sh", "-c", "git --version && curl --version | head -1 && ssh -V 2>&1 && ip -V && ls /etc/ssl/certs/ca-certificates.crt")
	if r.code != 0 || !strings.Contains(r.stdout, "git version") || !strings.Contains(r.stdout, "curl") || !strings.Contains(r.stdout, "OpenSSH") {
		t.Errorf("tools in the built image: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}

	// The kernel came from the archive's index; a second pull is told it
	// is up to date and downloads nothing.
	var k struct{ Name, Version, Source string }
	in.jsonOut(&k, "kernel", "show", "debian-12-cloud", "--json")
	if !strings.HasPrefix(k.Source, "catalog:debian-12-cloud (linux-image-") || !strings.Contains(k.Version, "cloud-amd64") {
		t.Errorf("kernel show: %+v", k)
	}
	r = in.runLimit(5*time.Minute, nil, "kernel", "pull", "debian-12-cloud")
	if r.code != 0 || !strings.Contains(r.stderr, "up to date") {
		t.Errorf("second kernel pull: exit %d, %q", r.code, r.stderr)
	}
	in.ok("kernel", "rm", "debian-12-cloud")
	r = in.runLimit(5*time.Minute, nil, "kernel", "pull", "debian-12-cloud")
	if r.code != 0 || !strings.Contains(r.stderr, "cached, not downloaded again") {
		t.Errorf("pull after rm: exit %d, %q", r.code, r.stderr)
	}

	// A build that mmdebstrap cannot do: its error, one line, nothing left.
	var before []imageJSON
	in.jsonOut(&before, "image", "list", "--json")
	in.fails("image build failed: mmdebstrap debian:nosuchsuite", "image", "build", "debian:nosuchsuite")
	in.fails("unknown distribution \"fedora\"", "image", "build", "fedora:40")
	in.fails("registry unreachable: cannot reach index.docker.io", "image", "pull", "alpine:3.20")
	in.fails("build it from the package archive instead: `banger image build debian:trixie`", "image", "pull", "debian:trixie")
	in.fails("already exists", "image", "build", "debian", "--name", "debian")
	// apt would install a local .deb unsigned, as root, or read a
	// pattern: --include takes package names only, refused before
	// mmdebstrap starts (no "mmdebstrap" in the error).
	for _, bad := range []string{"/dev/shm/x.deb", "?name(git)", "git=1:2.39.5-0+deb12u1"} {
		r := in.fails("give Debian package names", "image", "build", "debian", "--name", "evil", "--include", bad)
		if strings.Contains(r.stderr, "mmdebstrap") {
			t.Errorf("--include %q reached mmdebstrap: %s", bad, r.stderr)
		}
	}
	var ids []string
	for _, i := range before {
		ids = append(ids, i.ID)
	}
	if left := in.leftovers(ids...); len(left) != 0 {
		t.Errorf("leftovers after failed builds: %v", left)
	}
	if out, _ := exec.Command("pgrep", "-x", "mmdebstrap").Output(); len(out) != 0 {
		t.Errorf("mmdebstrap still running: %s", out)
	}

	// --include adds packages to the minimal system: tree is not in it.
	if r := in.runLimit(15*time.Minute, nil, "image", "build", "-q", "debian:bookworm", "--name", "withtree", "--include", "tree"); r.code != 0 || r.stdout != "withtree\n" {
		t.Fatalf("image build --include tree: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	for name, want := range map[string]bool{"withtree": true, "debian": false} {
		var img importJSON
		in.jsonOut(&img, "image", "show", name, "--json")
		out, _ := exec.Command("debugfs", "-R", "stat /usr/bin/tree", img.Rootfs).CombinedOutput()
		if has := !strings.Contains(string(out), "File not found"); has != want {
			t.Errorf("image %s has /usr/bin/tree: %v, want %v (%s)", name, has, want, out)
		}
	}
}
