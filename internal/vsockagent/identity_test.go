package vsockagent

import (
	"crypto/rand"
	"testing"

	"banger/internal/testenv"
)

// The reseed a restored VM gets is two ioctls on /dev/urandom; the
// kernel refuses a wrong request number or struct layout (ENOTTY,
// EINVAL), so the host's own kernel taking them says a guest's will.
// Adding entropy only mixes bytes in: harmless on the host.
func TestAddEntropyIoctls(t *testing.T) {
	testenv.RequireRoot(t) // CAP_SYS_ADMIN
	b := make([]byte, 64)
	rand.Read(b)
	if err := addEntropy(b); err != nil {
		t.Fatalf("addEntropy: %v", err)
	}
}
