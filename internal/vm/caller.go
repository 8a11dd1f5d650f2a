package vm

import (
	"os"
	"os/user"
	"strconv"

	"banger/internal/system"
)

// Caller is who asks the service for something: a user of the host, by
// uid, with their groups. What the service does on the host for them
// (a mount's files, a kernel's import) it does with their rights.
type Caller struct {
	UID, GID int
	Groups   []int // supplementary groups
	// Admin sees and acts on everything: root, and the daemon's own
	// user (a per-user instance's owner).
	Admin bool
}

// Self is the daemon's own user: what it does for itself (warm
// templates made ahead of time, reconcile).
func Self() Caller {
	return Caller{UID: os.Geteuid(), GID: os.Getegid(), Groups: GroupsOf(os.Geteuid()), Admin: true}
}

// sees reports whether c may see and act on what owner owns.
func (c Caller) sees(owner int) bool { return c.Admin || c.UID == owner }

// Cred is c as system.OpenAs takes it.
func (c Caller) Cred() system.Cred { return system.Cred{UID: c.UID, GID: c.GID, Groups: c.Groups} }

// GroupsOf lists the supplementary groups of uid from the host's user
// database (none when uid has no entry).
func GroupsOf(uid int) []int {
	u, err := user.LookupId(strconv.Itoa(uid))
	if err != nil {
		return nil
	}
	gs, _ := u.GroupIds()
	var out []int
	for _, g := range gs {
		if n, err := strconv.Atoi(g); err == nil {
			out = append(out, n)
		}
	}
	return out
}
