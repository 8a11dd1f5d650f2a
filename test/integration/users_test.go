package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/testenv"
)

// hostUser is a real account on the host, made with useradd for the
// tests that check what one user of a shared host may do to another's
// things.
type hostUser struct {
	name     string
	uid, gid int
	groups   []uint32
	home     string
}

var usersMu sync.Mutex

// testUser returns the account name, making it (with a home, in group
// banger) the first time. Accounts stay: making them is idempotent and
// tests in one run share them.
func testUser(t testing.TB, name string) hostUser {
	t.Helper()
	testenv.RequireRoot(t)
	usersMu.Lock()
	defer usersMu.Unlock()
	if out, err := exec.Command("groupadd", "-f", "banger").CombinedOutput(); err != nil {
		t.Fatalf("groupadd banger: %v %s", err, out)
	}
	if _, err := user.Lookup(name); err != nil {
		if out, err := exec.Command("useradd", "--create-home", "--shell", "/bin/sh", "--groups", "banger", name).CombinedOutput(); err != nil {
			t.Fatalf("useradd %s: %v %s", name, err, out)
		}
	} else if out, err := exec.Command("usermod", "-aG", "banger", name).CombinedOutput(); err != nil {
		t.Fatalf("usermod %s: %v %s", name, err, out)
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	hu := hostUser{name: name, home: u.HomeDir}
	hu.uid, _ = strconv.Atoi(u.Uid)
	hu.gid, _ = strconv.Atoi(u.Gid)
	gids, _ := u.GroupIds()
	for _, g := range gids {
		n, _ := strconv.Atoi(g)
		hu.groups = append(hu.groups, uint32(n))
	}
	return hu
}

// shareWithGroup lets members of group banger reach the instance's
// daemon, as `banger system install` does for the system instance.
func (in *instance) shareWithGroup() {
	in.t.Helper()
	os.Chmod(in.home, 0o755)
	os.Chmod(in.path("run"), 0o755)
	gid := groupID(in.t, "banger")
	os.Chown(in.path("run", "bangerd.sock"), 0, gid)
	os.Chmod(in.path("run", "bangerd.sock"), 0o660)
}

// runAs runs the CLI as u against the instance's daemon, never starting
// one of its own, in u's home.
func (in *instance) runAs(u hostUser, args ...string) result {
	in.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(in.bins, "banger"), args...)
	var env []string
	for _, e := range in.env {
		if !strings.HasPrefix(e, "HOME=") && !strings.HasPrefix(e, "USER=") && !strings.HasPrefix(e, "BANGER_HOME=") {
			env = append(env, e)
		}
	}
	// BANGER_HOST rather than --host: what the CLI starts (ssh's proxy
	// command) finds the same daemon.
	cmd.Env = append(env, "HOME="+u.home, "USER="+u.name, "BANGER_NO_AUTOSTART=1", "BANGER_HOST="+in.path("run", "bangerd.sock"))
	cmd.Dir = u.home
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: u.groups}}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		in.t.Fatalf("banger %v as %s: %v", args, u.name, err)
	}
	return result{out.String(), errb.String(), code}
}

// failsAs runs the CLI as u and checks it fails with one error line
// containing want.
func (in *instance) failsAs(u hostUser, want string, args ...string) result {
	in.t.Helper()
	r := in.runAs(u, args...)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if r.code == 0 || !strings.HasPrefix(lines[len(lines)-1], "banger: ") || !strings.Contains(lines[len(lines)-1], want) {
		in.t.Fatalf("banger %s as %s: exit %d, stderr %q: want it to fail with one line `banger: …%s…`", strings.Join(args, " "), u.name, r.code, r.stderr, want)
	}
	return r
}
