package vsockagent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// UserInfo is what ensure_user answers.
type UserInfo struct {
	User string `json:"user"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
	Home string `json:"home"`
	// Created says this call made the account (false: it existed).
	Created bool `json:"created"`
}

// userNameRE is what ensure_user accepts as a name: what useradd
// accepts by default, so no name can smuggle a field separator or a
// line into /etc/passwd.
var userNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// firstUID and lastUID bound the ids ensure_user gives new accounts
// (login.defs' UID_MIN and UID_MAX).
const (
	firstUID = 1000
	lastUID  = 60000
)

// ensureUserOp makes sure Req.User exists with a home (Req.Home,
// default /home/USER), and answers its UserInfo.
func (a *Agent) ensureUserOp(st *Stream) {
	name, home := st.Req.User, st.Req.Home
	if !userNameRE.MatchString(name) {
		st.Fail(agentErr(CodeInvalid, "ensure_user: %q is not a user name (lowercase letters, digits, _ and -)", name))
		return
	}
	if home == "" {
		home = "/home/" + name
	}
	if !filepath.IsAbs(home) || strings.ContainsAny(home, ":\n") {
		st.Fail(agentErr(CodeInvalid, "ensure_user: home %q must be an absolute path without ':'", home))
		return
	}
	info, err := a.ensureUser(name, filepath.Clean(home))
	if err != nil {
		st.Fail(coded(err))
		return
	}
	sendJSON(st, info)
}

// ensureUser adds the account to etc/passwd, etc/group and etc/shadow
// under the agent's root unless passwd has it, writing the files
// directly (busybox images have no useradd): a free uid from 1000, a
// group of the same name and id, no password ("*": key and su logins
// only), /bin/bash when the image has it, else /bin/sh. Its home is
// made (0755, the user's, seeded from etc/skel) when missing, also for
// an account that existed. Idempotent.
func (a *Agent) ensureUser(name, home string) (UserInfo, error) {
	a.users.Lock()
	defer a.users.Unlock()
	root := a.opts.Root
	etc := filepath.Join(root, "/etc")
	passwd, err := readEtc(filepath.Join(etc, "passwd"))
	if err != nil {
		return UserInfo{}, err
	}
	// Images as small as busybox's may have no /etc/group (or
	// shadow): they are made.
	group, err := readEtc(filepath.Join(etc, "group"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return UserInfo{}, err
	}
	info := UserInfo{User: name, UID: -1, GID: -1, Home: home}
	if f := findEntry(passwd, name); len(f) > 0 && len(f) < 7 {
		return UserInfo{}, fmt.Errorf("ensure_user: %s's line in /etc/passwd has %d fields, not 7", name, len(f))
	} else if f != nil {
		info.UID, _ = strconv.Atoi(f[2])
		info.GID, _ = strconv.Atoi(f[3])
		info.Home = f[5]
	} else {
		uids, gids := idsOf(passwd), idsOf(group)
		if f := findEntry(group, name); f != nil {
			info.GID, _ = strconv.Atoi(f[2])
		}
		for n := firstUID; n <= lastUID && info.UID < 0; n++ {
			if !uids[n] && (info.GID >= 0 || !gids[n]) {
				info.UID = n
			}
		}
		if info.UID < 0 {
			return UserInfo{}, fmt.Errorf("ensure_user: no free uid between %d and %d", firstUID, lastUID)
		}
		if info.GID < 0 {
			info.GID = info.UID
			if err := appendEtc(filepath.Join(etc, "group"), fmt.Sprintf("%s:x:%d:", name, info.GID)); err != nil {
				return UserInfo{}, err
			}
		}
		shell := "/bin/sh"
		if _, err := os.Stat(filepath.Join(root, "/bin/bash")); err == nil {
			shell = "/bin/bash"
		}
		days := time.Now().Unix() / 86400
		for _, add := range []struct{ file, line string }{
			{"shadow", fmt.Sprintf("%s:*:%d:0:99999:7:::", name, days)},
			{"gshadow", name + ":!::"},
			{"passwd", fmt.Sprintf("%s:x:%d:%d::%s:%s", name, info.UID, info.GID, home, shell)},
		} {
			p := filepath.Join(etc, add.file)
			lines, err := readEtc(p)
			if errors.Is(err, fs.ErrNotExist) && add.file == "gshadow" {
				continue // only where the image keeps one
			}
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return UserInfo{}, err
			}
			if findEntry(lines, name) == nil {
				if err := appendEtc(p, add.line); err != nil {
					return UserInfo{}, err
				}
			}
		}
		info.Created = true
	}
	if err := makeHome(root, info); err != nil {
		return UserInfo{}, err
	}
	return info, nil
}

// makeHome makes the user's home under root when it is missing: 0755,
// the user's, with etc/skel's files.
func makeHome(root string, info UserInfo) error {
	h := filepath.Join(root, info.Home)
	if _, err := os.Lstat(h); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(h), 0o755); err != nil {
		return fmt.Errorf("making %s: %w", info.Home, err)
	}
	if err := os.Mkdir(h, 0o755); err != nil {
		return fmt.Errorf("making %s: %w", info.Home, err)
	}
	if err := errors.Join(os.Chmod(h, 0o755), os.Lchown(h, info.UID, info.GID)); err != nil {
		return fmt.Errorf("giving %s to %s: %w", info.Home, info.User, err)
	}
	skel := filepath.Join(root, "/etc/skel")
	ents, _ := os.ReadDir(skel)
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(skel, e.Name()))
		if err != nil {
			continue
		}
		p := filepath.Join(h, e.Name())
		if os.WriteFile(p, b, 0o644) == nil {
			os.Lchown(p, info.UID, info.GID)
		}
	}
	return nil
}

// readEtc reads a colon-separated database as lines.
func readEtc(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n"), nil
}

// findEntry returns the fields of name's line, or nil.
func findEntry(lines []string, name string) []string {
	for _, l := range lines {
		if f := strings.Split(l, ":"); len(f) >= 2 && f[0] == name {
			return f
		}
	}
	return nil
}

// idsOf is the set of the third field's ids (uids of passwd, gids of
// group).
func idsOf(lines []string) map[int]bool {
	out := map[int]bool{}
	for _, l := range lines {
		if f := strings.Split(l, ":"); len(f) >= 3 {
			if n, err := strconv.Atoi(f[2]); err == nil {
				out[n] = true
			}
		}
	}
	return out
}

// appendEtc adds line to the database at path, replacing the file
// atomically (staged beside it, synced, renamed) with its mode and
// owner kept; a missing file is made 0600 (root's: shadow).
func appendEtc(path, line string) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	// A new passwd or group is everyone's to read (name lookups); a new
	// shadow, root's alone.
	mode, uid, gid := fs.FileMode(0o644), 0, 0
	if strings.Contains(filepath.Base(path), "shadow") {
		mode = 0o600
	}
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(sys.Uid), int(sys.Gid)
		}
	}
	if len(old) > 0 && old[len(old)-1] != '\n' {
		old = append(old, '\n')
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".banger-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(old, line+"\n"...))
	if err == nil {
		err = errors.Join(tmp.Chmod(mode), tmp.Chown(uid, gid), tmp.Sync())
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("adding to %s: %w", path, err)
	}
	return nil
}
