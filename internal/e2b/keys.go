package e2b

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/store"
	"banger/internal/vm"
)

// API keys: "e2b_" and 40 hex digits, as E2B's, sent as X-API-Key. The
// store keeps the SHA-256 of each (a key is 160 random bits: a plain
// hash is as good as a slow one) and who made it; a key acts as that
// user.

const keyPrefix = "e2b_"

func hashKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// CreateKey makes a key for the user c and returns it, with the key's
// text: the only time anyone sees it.
func (s *Service) CreateKey(ctx context.Context, c vm.Caller, req api.E2BKeyRequest) (api.E2BKey, error) {
	if len(req.Name) > 64 || strings.ContainsAny(req.Name, "\x00\n\t") {
		return api.E2BKey{}, fmt.Errorf("%w: key name %q: one line of at most 64 characters", api.ErrInvalid, req.Name)
	}
	key := keyPrefix + newToken(20)
	k := api.E2BKey{ID: newToken(6), Name: req.Name, Prefix: key[:len(keyPrefix)+6], Owner: c.UID, CreatedAt: time.Now().UTC()}
	if err := s.store.InsertE2BKey(ctx, k, hashKey(key)); err != nil {
		return api.E2BKey{}, err
	}
	s.log.Info("e2b key created", "key", k.ID, "owner", c.UID)
	k.OwnerName = vm.OwnerName(k.Owner)
	k.Key, k.APIURL = key, s.APIURL()
	return k, nil
}

// Keys lists the keys c may see: their own (an admin: everyone's).
func (s *Service) Keys(ctx context.Context, c vm.Caller) ([]api.E2BKey, error) {
	all, err := s.store.E2BKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.E2BKey{}
	for _, k := range all {
		if c.Admin || k.Owner == c.UID {
			k.OwnerName = vm.OwnerName(k.Owner)
			out = append(out, k)
		}
	}
	return out, nil
}

// RemoveKey removes c's key id (an admin: anyone's). Sandboxes made
// with it stay, their owner's; the key no longer reaches them.
func (s *Service) RemoveKey(ctx context.Context, c vm.Caller, id string) (api.E2BKey, error) {
	keys, err := s.Keys(ctx, c)
	if err != nil {
		return api.E2BKey{}, err
	}
	for _, k := range keys {
		if k.ID == id || (k.Name != "" && k.Name == id) {
			if err := s.store.DeleteE2BKey(ctx, k.ID); err != nil {
				return api.E2BKey{}, err
			}
			s.log.Info("e2b key removed", "key", k.ID, "owner", k.Owner, "by", c.UID)
			return k, nil
		}
	}
	return api.E2BKey{}, fmt.Errorf("%w: no E2B key %q of yours: list yours with `banger e2b key ls`", store.ErrNotFound, id)
}

// errUnauthorized is a request without a valid key.
var errUnauthorized = errors.New("unauthorized")

// authenticate is the key of r's X-API-Key and the user it acts as.
func (s *Service) authenticate(r *http.Request) (api.E2BKey, vm.Caller, error) {
	key := r.Header.Get("X-API-Key")
	if key == "" {
		return api.E2BKey{}, vm.Caller{}, fmt.Errorf("%w: no API key: send one in X-API-Key (E2B_API_KEY); make one with `banger e2b key create`", errUnauthorized)
	}
	k, err := s.store.E2BKeyByHash(r.Context(), hashKey(key))
	if errors.Is(err, store.ErrNotFound) {
		return api.E2BKey{}, vm.Caller{}, fmt.Errorf("%w: invalid API key: make one with `banger e2b key create`", errUnauthorized)
	}
	if err != nil {
		return api.E2BKey{}, vm.Caller{}, err
	}
	c, err := callerOf(k.Owner)
	if err != nil {
		return api.E2BKey{}, vm.Caller{}, fmt.Errorf("%w: %v", errUnauthorized, err)
	}
	if s.allowed != nil {
		if why := s.allowed(c.UID, c.GID); why != "" {
			return api.E2BKey{}, vm.Caller{}, fmt.Errorf("%w: the key's owner %s", errUnauthorized, why)
		}
	}
	// The last use is kept to the minute: not a write per request.
	if k.LastUsed == nil || time.Since(*k.LastUsed) > time.Minute {
		if err := s.store.TouchE2BKey(r.Context(), k.ID, time.Now()); err != nil {
			s.log.Warn("recording an E2B key's use", "key", k.ID, "err", err)
		}
	}
	return k, c, nil
}
