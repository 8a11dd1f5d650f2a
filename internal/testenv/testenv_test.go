package testenv

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// bareSkip is a skip that does not go through this package.
var bareSkip = regexp.MustCompile(`\b([a-z]+)\.Skip(f|Now)?\(`)

// TestNoBareSkips holds that every skip in the repository's tests goes
// through testenv, where strict mode sees it.
func TestNoBareSkips(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	var bad []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || p == filepath.Dir(file)) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for i, l := range strings.Split(string(b), "\n") {
			if m := bareSkip.FindStringSubmatch(l); m != nil && m[1] != "testenv" {
				rel, _ := filepath.Rel(root, p)
				bad = append(bad, rel+":"+itoa(i+1)+": "+strings.TrimSpace(l))
			}
		}
		return nil
	})
	if len(bad) > 0 {
		t.Errorf("skips that bypass testenv (use testenv.Skip, Require*, SkipExpected, SkipInput or SkipShort):\n%s", strings.Join(bad, "\n"))
	}
}

func itoa(i int) string {
	s := ""
	for ; i > 0; i /= 10 {
		s = string(rune('0'+i%10)) + s
	}
	return s
}

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
