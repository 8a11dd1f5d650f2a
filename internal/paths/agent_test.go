package paths

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"banger/internal/testenv"
)

func TestCheckStaticBinary(t *testing.T) {
	testenv.RequireBinary(t, "ls", "coreutils")
	dynamic, _ := exec.LookPath("ls")
	err := CheckStaticBinary(dynamic)
	if !errors.Is(err, ErrAgentNotStatic) || !strings.Contains(err.Error(), "libc.so") || !strings.Contains(err.Error(), "scripts/build.sh") {
		t.Errorf("CheckStaticBinary(%s) = %v, want ErrAgentNotStatic naming libc and the fix", dynamic, err)
	}
	script := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	if err := CheckStaticBinary(script); err == nil || !strings.Contains(err.Error(), "not an executable") {
		t.Errorf("CheckStaticBinary(script) = %v", err)
	}
}

// TestPlainGoBuildMakesAStaticAgent builds the agent the way the module
// invites, `go build` with cgo on, and checks the result is static: the
// build that once made every VM panic with "No working init found".
func TestPlainGoBuildMakesAStaticAgent(t *testing.T) {
	testenv.RequireBinary(t, "gcc", "apt-get install gcc libc6-dev: without a C compiler cgo is off anyway, and the agent static")
	testenv.SkipShort(t, "builds the agent")
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	for _, cgo := range []string{"1", "0"} {
		out := filepath.Join(t.TempDir(), "banger-vsock-agent")
		cmd := exec.Command("go", "build", "-o", out, "./cmd/banger-vsock-agent")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("CGO_ENABLED=%s go build: %v\n%s", cgo, err, b)
		}
		if err := CheckStaticBinary(out); err != nil {
			t.Errorf("CGO_ENABLED=%s: %v", cgo, err)
		}
	}
}
