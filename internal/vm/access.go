package vm

import (
	"context"
	"errors"
	"fmt"
	"os/user"
	"strconv"
	"sync"

	"banger/internal/api"
	"banger/internal/store"
)

// This file is the one check that decides who may see and act on a VM
// or a snapshot: a caller who is not an admin (root, or the daemon's
// own user) sees their own only. Everything else is "not found", worded
// the same whether it exists or not, so nothing about another user's
// VM leaks: not its name, not its state.

// lookup reads the VM name as c may see it.
func (s *Service) lookup(ctx context.Context, c Caller, name string) (api.VM, error) {
	v, err := s.store.VM(ctx, name)
	if err == nil && !c.sees(v.Owner) {
		err = store.ErrNotFound
	}
	if errors.Is(err, store.ErrNotFound) {
		return api.VM{}, notYours(c, "VM", name, "banger vm ls")
	}
	return v, err
}

// lockOwn takes the lock of c's VM name and reads it. Whether c may see
// it is checked before the lock too, so another user's busy VM never
// holds up (or times) a request that is refused anyway.
func (s *Service) lockOwn(ctx context.Context, c Caller, name string) (api.VM, func(), error) {
	if _, err := s.lookup(ctx, c, name); err != nil {
		return api.VM{}, nil, err
	}
	unlock := s.vmLock(name)
	v, err := s.lookup(ctx, c, name)
	if err != nil {
		unlock()
		return api.VM{}, nil, err
	}
	return v, unlock, nil
}

// lookupSnapshot reads the snapshot name as c may see it.
func (s *Service) lookupSnapshot(ctx context.Context, c Caller, name string) (api.Snapshot, error) {
	sn, err := s.store.Snapshot(ctx, name)
	if err == nil && !c.sees(sn.Owner) {
		err = store.ErrNotFound
	}
	if errors.Is(err, store.ErrNotFound) {
		return api.Snapshot{}, notYours(c, "snapshot", name, "banger snapshot ls")
	}
	return sn, err
}

// notYours is the not-found error c gets for what, named name: an admin
// hears it does not exist; anyone else that they have none of that name.
func notYours(c Caller, what, name, list string) error {
	if c.Admin {
		return fmt.Errorf("%w: %s %q: list them with `%s`", store.ErrNotFound, what, name, list)
	}
	return fmt.Errorf("%w: no %s %q of yours: list yours with `%s`", store.ErrNotFound, what, name, list)
}

// takenName is the error for a name in use: by c, with what to do; by
// someone else, without saying by whom (names are DNS names, unique per
// host).
func takenName(c Caller, what string, owner int, name, rm string) error {
	if c.sees(owner) {
		return fmt.Errorf("%w: %s %q exists: pick another --name or remove it with `%s %s`", store.ErrExists, what, name, rm, name)
	}
	return fmt.Errorf("%w: the %s name %q is taken: pick another --name", store.ErrExists, what, name)
}

// userNames caches uid → user name lookups for owner_name.
var userNames sync.Map

// OwnerName is the user name of uid, or its number when the host has no
// such user.
func OwnerName(uid int) string {
	if n, ok := userNames.Load(uid); ok {
		return n.(string)
	}
	n := strconv.Itoa(uid)
	if u, err := user.LookupId(n); err == nil {
		n = u.Username
	}
	userNames.Store(uid, n)
	return n
}

// shown is v as callers see it: with its owner's name and SSH host key.
func shown(v api.VM) api.VM {
	v.OwnerName = OwnerName(v.Owner)
	return withHostKey(v)
}
