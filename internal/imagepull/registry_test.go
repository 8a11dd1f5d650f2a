package imagepull

import (
	"os"
	"path/filepath"
	"testing"
)

// fakeAgent writes a stand-in agent binary; injection copies any file.
func fakeAgent(tb testing.TB) (string, string) {
	tb.Helper()
	content := "#!/bin/sh\necho banger-vsock-agent test build\n"
	p := filepath.Join(tb.TempDir(), "banger-vsock-agent")
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		tb.Fatal(err)
	}
	return p, content
}
