package images

import (
	"errors"
	"testing"

	"banger/internal/api"
)

func TestValidateImageName(t *testing.T) {
	for _, ok := range []string{"alpine", "alpine:3.20", "127.0.0.1:5000/x/y:z", "ghcr.io/o/r@sha256:abc", "a_b-c.d"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%q rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Alpine", "-x", ".x", "a b", "a/../b", "a//b", string(make([]byte, 300))} {
		if err := ValidateName(bad); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%q accepted", bad)
		}
	}
}
