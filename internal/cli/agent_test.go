package cli

import (
	"testing"

	"banger/internal/vsockagent"
)

// Out of a VM, the guest's owners and setuid/setgid bits are kept only
// when asked, and only for root: by default, not even under sudo.
func TestCopyOutOptions(t *testing.T) {
	for _, c := range []struct {
		name           string
		preserveOwners bool
		euid           int
		want           vsockagent.ExtractOptions
		wantErr        bool
	}{
		{"user", false, 1000, vsockagent.ExtractOptions{}, false},
		{"sudo", false, 0, vsockagent.ExtractOptions{}, false},
		{"sudo --preserve-owners", true, 0, vsockagent.ExtractOptions{Owners: true, SetID: true}, false},
		{"user --preserve-owners", true, 1000, vsockagent.ExtractOptions{}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := copyOutOptions(c.preserveOwners, c.euid)
			if (err != nil) != c.wantErr || got != c.want {
				t.Errorf("copyOutOptions(%v, %d) = %+v, %v; want %+v, error %v", c.preserveOwners, c.euid, got, err, c.want, c.wantErr)
			}
		})
	}
}
