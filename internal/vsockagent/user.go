package vsockagent

import (
	"fmt"
	"os"
	"strconv"
	"strings"
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
