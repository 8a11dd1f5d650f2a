package guestnet

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/testenv"
)

// runBootstrap runs the script against a fake root and command line.
func runBootstrap(t *testing.T, root, cmdline string) {
	t.Helper()
	script := filepath.Join(t.TempDir(), "bootstrap")
	if err := os.WriteFile(script, []byte(BootstrapScript()), 0o755); err != nil {
		t.Fatal(err)
	}
	cl := filepath.Join(t.TempDir(), "cmdline")
	os.WriteFile(cl, []byte(cmdline), 0o644)
	cmd := exec.Command("/bin/sh", script)
	cmd.Env = append(os.Environ(), "BANGER_ROOT="+root, "BANGER_CMDLINE="+cl)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}
}

func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, f := range []string{"etc/hostname", "etc/hosts", "etc/resolv.conf"} {
		b, _ := os.ReadFile(filepath.Join(root, f))
		out[f] = string(b)
	}
	return out
}

func TestBootstrapIsIdempotent(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("127.0.0.1\tlocalhost\n10.0.0.9\tdev\n"), 0o644)
	os.Symlink("/run/systemd/resolve/stub-resolv.conf", filepath.Join(root, "etc/resolv.conf"))
	cmdline := "console=ttyS0 banger.ip=10.77.0.5/24 banger.gw=10.77.0.1 banger.dns=10.77.0.1 banger.hostname=dev quiet"
	runBootstrap(t, root, cmdline)
	first := snapshot(t, root)
	if first["etc/hostname"] != "dev\n" || first["etc/resolv.conf"] != "nameserver 10.77.0.1\n" {
		t.Errorf("after first run: %q", first)
	}
	if !strings.Contains(first["etc/hosts"], "10.77.0.5\tdev\n") || strings.Contains(first["etc/hosts"], "10.0.0.9") || !strings.Contains(first["etc/hosts"], "localhost") {
		t.Errorf("hosts = %q", first["etc/hosts"])
	}
	fi, _ := os.Lstat(filepath.Join(root, "etc/resolv.conf"))
	mtime := fi.ModTime()
	runBootstrap(t, root, cmdline)
	if second := snapshot(t, root); second["etc/hosts"] != first["etc/hosts"] || second["etc/hostname"] != first["etc/hostname"] || second["etc/resolv.conf"] != first["etc/resolv.conf"] {
		t.Errorf("second run changed files:\n%q\n%q", first, second)
	}
	if fi, _ := os.Lstat(filepath.Join(root, "etc/resolv.conf")); !fi.ModTime().Equal(mtime) {
		t.Errorf("second run rewrote resolv.conf")
	}
}

func TestBootstrapShellcheck(t *testing.T) {
	testenv.RequireBinary(t, "shellcheck", "apt-get install shellcheck")
	script := filepath.Join(t.TempDir(), "bootstrap.sh")
	os.WriteFile(script, []byte(BootstrapScript()), 0o644)
	if out, err := exec.Command("shellcheck", "-s", "sh", script).CombinedOutput(); err != nil {
		t.Errorf("shellcheck: %v\n%s", err, out)
	}
}

func TestUnitRunsInstalledScript(t *testing.T) {
	if !strings.Contains(SystemdServiceUnit(), "ExecStart="+GuestScriptPath+"\n") {
		t.Errorf("unit does not run %s", GuestScriptPath)
	}
}
