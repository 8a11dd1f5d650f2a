package vsockagent

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// LookupUser resolves "name", "uid", "name:group" or "uid:gid" against
// the root's /etc/passwd and /etc/group. An empty user is root.
func LookupUser(root, spec string) (uid, gid int, home string, err error) {
	if spec == "" {
		return 0, 0, "/root", nil
	}
	u, g, hasGroup := strings.Cut(spec, ":")
	uid, gid, home = -1, -1, "/"
	if n, err := strconv.Atoi(u); err == nil {
		uid = n
	}
	if b, err := os.ReadFile(root + "/etc/passwd"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Split(line, ":")
			if len(f) < 7 {
				continue
			}
			id, _ := strconv.Atoi(f[2])
			if f[0] == u || (uid >= 0 && id == uid) {
				uid = id
				gid, _ = strconv.Atoi(f[3])
				home = f[5]
				break
			}
		}
	}
	if uid < 0 {
		return 0, 0, "", fmt.Errorf("user %q is not in the image's /etc/passwd", u)
	}
	if hasGroup {
		gid = -1
		if n, err := strconv.Atoi(g); err == nil {
			gid = n
		} else if b, err := os.ReadFile(root + "/etc/group"); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if f := strings.Split(line, ":"); len(f) >= 3 && f[0] == g {
					gid, _ = strconv.Atoi(f[2])
				}
			}
		}
		if gid < 0 {
			return 0, 0, "", fmt.Errorf("group %q is not in the image's /etc/group", g)
		}
	}
	if gid < 0 {
		gid = uid
	}
	return uid, gid, home, nil
}

// identity is who a request acts as: the resolved user, with the
// supplementary groups /etc/group lists them in.
type identity struct {
	name     string // "root" for the default user
	uid, gid int
	home     string
	groups   []uint32
}

// lookupIdentity resolves spec (see LookupUser) under root, the
// directory holding etc/passwd and etc/group ("" is /). An unknown user
// is an *AgentError with CodeNoUser.
func lookupIdentity(root, spec string) (identity, error) {
	uid, gid, home, err := LookupUser(root, spec)
	if err != nil {
		return identity{}, &AgentError{Code: CodeNoUser, Message: err.Error()}
	}
	id := identity{name: userName(spec), uid: uid, gid: gid, home: home}
	if u, ok := readIDNames(root, "passwd")[uid]; ok {
		id.name = u
	}
	id.groups = supplementaryGroups(root, id.name, gid)
	return id, nil
}

// credential is what a process started as id runs with: nil for the
// agent's own identity. Supplementary groups are set only when the agent
// may (as root); otherwise they stay the agent's.
func (id identity) credential(spec string) *syscall.Credential {
	if spec == "" {
		return nil
	}
	c := &syscall.Credential{Uid: uint32(id.uid), Gid: uint32(id.gid), Groups: id.groups}
	if os.Geteuid() != 0 {
		c.Groups, c.NoSetGroups = nil, true
	}
	return c
}

// supplementaryGroups is gid and every group of root's /etc/group that
// lists user as a member, as initgroups(3) makes them.
func supplementaryGroups(root, user string, gid int) []uint32 {
	groups := []uint32{uint32(gid)}
	b, err := os.ReadFile(root + "/etc/group")
	if err != nil {
		return groups
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 4 {
			continue
		}
		g, err := strconv.Atoi(f[2])
		if err != nil || g == gid {
			continue
		}
		if slices.Contains(strings.Split(f[3], ","), user) {
			groups = append(groups, uint32(g))
		}
	}
	return groups
}

// readIDNames maps ids to names from root's etc/passwd or etc/group
// (file is "passwd" or "group"); the first name of an id wins.
func readIDNames(root, file string) map[int]string {
	out := map[int]string{}
	b, err := os.ReadFile(root + "/etc/" + file)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 3 {
			continue
		}
		if id, err := strconv.Atoi(f[2]); err == nil {
			if _, ok := out[id]; !ok {
				out[id] = f[0]
			}
		}
	}
	return out
}
