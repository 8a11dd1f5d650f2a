package store

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
)

// NewID returns a new record id: 24 hex digits, also the name of the
// record's directory.
func NewID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Hint adds what to do next to a not-found error; other errors pass as
// they are.
func Hint(err error, hint string) error {
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w: %s", err, hint)
	}
	return err
}
