// Package depcheck guards the project's import rules with tests: the
// guest agent ships in every image and must stay small, and host commands
// run only through internal/system.
package depcheck

import (
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// The agent may use the standard library and these banger packages only.
var agentAllowed = map[string]bool{
	"banger/cmd/banger-vsock-agent": true,
	"banger/internal/version":       true,
	"banger/internal/vsockagent":    true,
	"banger/internal/guestnet":      true,
	"banger/internal/guestinit":     true,
	// synced mounts' guest side: the standard library and x/sys only.
	"banger/internal/filesync": true,
	// inotify watches: synced mounts and the agent's watch op.
	"banger/internal/fswatch": true,
	"golang.org/x/sys/unix":   true,
	"golang.org/x/crypto/ssh": true,
	// sftp for the agent's SSH server (scp, rsync and editors need it).
	"github.com/kr/fs": true,
}

func TestGuestAgentDependencies(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./cmd/banger-vsock-agent")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if !agentAllowed[pkg] && !strings.HasPrefix(pkg, "golang.org/x/sys/") && !strings.HasPrefix(pkg, "golang.org/x/crypto/") && !strings.HasPrefix(pkg, "github.com/pkg/sftp") {
			t.Errorf("banger-vsock-agent depends on %s: the agent ships in every image; keep it to the allowlist in %s", pkg, "internal/depcheck")
		}
	}
}

func TestOnlySystemRunsCommands(t *testing.T) {
	root := repoRoot(t)
	fset := token.NewFileSet()
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if strings.HasPrefix(rel, "internal/system/") || strings.HasPrefix(rel, "cmd/") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ImportsOnly)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		for _, imp := range f.Imports {
			if path, _ := strconv.Unquote(imp.Path.Value); path == "os/exec" {
				t.Errorf("%s imports os/exec: run host commands through internal/system", rel)
			}
		}
		return nil
	})
}

// The CLI renders and asks; it never reaches into the daemon's packages.
func TestCLIImportsNoDaemonPackages(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "./cmd/banger")
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		switch pkg {
		case "banger/internal/daemon", "banger/internal/store", "banger/internal/imagepull", "modernc.org/sqlite":
			t.Errorf("the CLI depends on %s", pkg)
		}
	}
}

// The daemon is wiring and HTTP: only its wiring file knows the VMM
// backends, the mount and sync machinery, the bridge and snapshots;
// every other file reaches them through a service.
func TestDaemonKnowsBackendsOnlyInItsWiring(t *testing.T) {
	wiringOnly := map[string]bool{
		"banger/internal/vmm/qemu": true, "banger/internal/vmm/firecracker": true, "banger/internal/virtiofs": true,
		"banger/internal/filesync": true, "banger/internal/hostnet": true, "banger/internal/snapshot": true,
	}
	dir := filepath.Join(repoRoot(t), "internal", "daemon")
	files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	fset := token.NewFileSet()
	for _, p := range files {
		if strings.HasSuffix(p, "_test.go") || filepath.Base(p) == "wire.go" {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		for _, imp := range f.Imports {
			if path, _ := strconv.Unquote(imp.Path.Value); wiringOnly[path] {
				t.Errorf("internal/daemon/%s imports %s: only wire.go may; reach it through a service", filepath.Base(p), path)
			}
		}
	}
}

// The lifecycle's one door: the VM service depends on the VMM interface,
// the store and the network, never on the daemon or HTTP, and the
// daemon depends on it, not the other way round.
func TestVMServiceDirection(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}}: {{join .Imports \" \"}}", "./internal/vm", "./internal/images", "./internal/kernels", "./internal/vmnet")
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, ": ")
		for _, imp := range strings.Fields(imports) {
			switch {
			case imp == "banger/internal/daemon", imp == "net/http" && pkg != "banger/internal/kernels",
				pkg == "banger/internal/vm" && (imp == "banger/internal/vmm/qemu" || imp == "banger/internal/vmm/firecracker"):
				t.Errorf("%s imports %s", pkg, imp)
			}
		}
	}
	deps := exec.Command("go", "list", "-deps", "./internal/vm")
	deps.Dir = repoRoot(t)
	out, err = deps.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	if strings.Contains(string(out), "banger/internal/daemon\n") {
		t.Error("internal/vm depends on internal/daemon")
	}
}
