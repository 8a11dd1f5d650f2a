package daemon

import (
	"context"
	"net"
	"os"
	"os/user"
	"slices"
	"strconv"

	"banger/internal/vm"

	"golang.org/x/sys/unix"
)

type peerKey struct{}

// peerCred is the identity of the process at the other end of a socket.
type peerCred struct {
	ok       bool
	uid, gid uint32
	pid      int32
}

// withPeerCred records the connecting process's credentials (SO_PEERCRED)
// in the connection's context.
func withPeerCred(ctx context.Context, c net.Conn) context.Context {
	var pc peerCred
	if uc, ok := c.(*net.UnixConn); ok {
		if raw, err := uc.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) {
				cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
				if err == nil {
					pc = peerCred{ok: true, uid: cred.Uid, gid: cred.Gid, pid: cred.Pid}
				}
			})
		}
	}
	return context.WithValue(ctx, peerKey{}, pc)
}

// allowedPeers decides who may use the API: root, the daemon's own user,
// and members of the configured group.
type allowedPeers struct {
	self  uint32
	group string
}

func newAllowedPeers(group string) allowedPeers {
	return allowedPeers{self: uint32(os.Geteuid()), group: group}
}

// check returns "" when the peer may proceed, else why not. The group is
// looked up at each check, not once at start: a group made after bangerd
// started (`banger system install`, groupadd) counts at once, as new
// members do.
func (a allowedPeers) check(pc peerCred) string {
	if !pc.ok {
		return "could not read the caller's credentials"
	}
	if pc.uid == 0 || pc.uid == a.self {
		return ""
	}
	if g, err := user.LookupGroup(a.group); err == nil {
		if strconv.Itoa(int(pc.gid)) == g.Gid {
			return ""
		}
		if u, err := user.LookupId(strconv.Itoa(int(pc.uid))); err == nil {
			if gids, err := u.GroupIds(); err == nil && slices.Contains(gids, g.Gid) {
				return ""
			}
		}
	}
	return "uid " + strconv.Itoa(int(pc.uid)) + " may not use bangerd: add the user to group " + a.group +
		" (`sudo usermod -aG " + a.group + " $USER`, then log in again)"
}

// callerOf is the user who made the request, with their groups: what
// the services do on the host for them they do with their rights.
func callerOf(ctx context.Context) vm.Caller {
	pc, _ := ctx.Value(peerKey{}).(peerCred)
	if !pc.ok {
		return vm.Self()
	}
	uid := int(pc.uid)
	// Root and the daemon's own user (a per-user instance's owner) see
	// and act on everything.
	return vm.Caller{UID: uid, GID: int(pc.gid), Groups: vm.GroupsOf(uid), Admin: uid == 0 || uid == os.Geteuid()}
}
