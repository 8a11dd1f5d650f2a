package guestinit

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

func TestRenewMachineID(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "machine-id")
	const old = "0123456789abcdef0123456789abcdef\n"
	os.WriteFile(p, []byte(old), 0o444)
	seen := map[string]bool{old: true}
	for i := 0; i < 3; i++ {
		if err := renewMachineID(p); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(p)
		if !regexp.MustCompile(`^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}\n$`).Match(b) {
			t.Fatalf("machine id %q is not a v4 id128", b)
		}
		if seen[string(b)] {
			t.Fatalf("machine id %q repeated", b)
		}
		seen[string(b)] = true
	}
	// No file, and systemd's empty first-boot file, stay as they are.
	if err := renewMachineID(filepath.Join(dir, "none")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "none")); !os.IsNotExist(err) {
		t.Errorf("a machine id was made where there was none")
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o444)
	renewMachineID(empty)
	if b, _ := os.ReadFile(empty); len(b) != 0 {
		t.Errorf("an empty machine id became %q", b)
	}
}
