package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// An expected skip is logged for scripts/test.sh; a name that is not in
// Expected fails.
func TestSkipExpectedLogs(t *testing.T) {
	log := filepath.Join(t.TempDir(), "skips")
	t.Setenv(SkipLogEnv, log)
	t.Setenv("BANGER_TEST_STRICT", "1")
	t.Run("expected", func(t *testing.T) {
		SkipExpected(t, "firecracker", "no binary")
	})
	b, _ := os.ReadFile(log)
	if string(b) != "firecracker\t"+Expected["firecracker"]+"\n" {
		t.Errorf("skip log = %q", b)
	}
}
