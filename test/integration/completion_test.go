package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/testenv"
)

// TestCompletionScripts: `banger completion bash|zsh|fish` print scripts
// each shell accepts, and bash and fish, having sourced theirs, complete
// banger's commands.
func TestCompletionScripts(t *testing.T) {
	in := newInstance(t)
	dir := t.TempDir()
	script := func(shell string) string {
		p := filepath.Join(dir, "banger."+shell)
		if err := os.WriteFile(p, []byte(in.ok("completion", shell)), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	shell := func(name string, args ...string) string {
		t.Helper()
		testenv.RequireBinary(t, name, "apt-get install "+name)
		cmd := exec.Command(name, args...)
		cmd.Env = append(in.env, "BANGER_NO_AUTOSTART=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	bash := script("bash")
	shell("bash", "-n", bash)
	if out := shell("bash", "-c", "source "+bash+" && complete -p banger"); !strings.Contains(out, "banger") {
		t.Errorf("bash: no completion registered for banger: %q", out)
	}
	shell("zsh", "-n", script("zsh"))
	fish := script("fish")
	shell("fish", "--no-execute", fish)
	if out := shell("fish", "-c", "source "+fish+"; complete -C 'banger vm cr'"); !strings.Contains(out, "create") {
		t.Errorf("fish completes `banger vm cr` as %q, want create", out)
	}
}

// TestVersion: `banger version` says the CLI's version, and the
// daemon's only when one runs, never starting one for it.
func TestVersion(t *testing.T) {
	in := newInstance(t)
	if out := in.ok("version"); !strings.HasPrefix(out, "banger  dev (") || !strings.Contains(out, "bangerd not running") {
		t.Errorf("version without a daemon: %q", out)
	}
	if _, err := os.Stat(in.path("run", "bangerd.sock")); err == nil {
		t.Errorf("banger version started a daemon")
	}
	pid := in.daemonPID()
	out := in.ok("version")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "banger  dev (") || !strings.HasPrefix(lines[1], "bangerd dev (") {
		t.Errorf("version with a daemon: %q", out)
	}
	var v struct {
		Client struct{ Version, Commit string }
		Daemon *struct{ Version, Commit string }
	}
	if err := json.Unmarshal([]byte(in.ok("version", "--json")), &v); err != nil || v.Daemon == nil || v.Daemon.Version != v.Client.Version || v.Daemon.Commit != v.Client.Commit {
		t.Errorf("version --json: %+v %v", v, err)
	}
	if in.daemonPID() != pid {
		t.Errorf("the daemon changed under banger version")
	}
}
