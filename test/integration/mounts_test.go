package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/testenv"
)

type mountJSON struct {
	Host     string `json:"host"`
	Guest    string `json:"guest"`
	ReadOnly bool   `json:"read_only"`
	Kind     string `json:"kind"`
	PID      int    `json:"pid"`
	Error    string `json:"error"`
}

// virtiofsds lists the virtiofsd processes serving dir.
func virtiofsds(dir string) string {
	out, _ := exec.Command("pgrep", "-a", "-f", "virtiofsd.*source="+dir).Output()
	return strings.TrimSpace(string(out))
}

// fileTree writes n small files under dir, 100 to a directory.
func fileTree(t testing.TB, dir string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		d := filepath.Join(dir, fmt.Sprintf("d%03d", i/100))
		if i%100 == 0 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%03d.txt", i%100)), []byte(fmt.Sprintf("file %d\n", i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVMMounts shares two host directories with a QEMU VM through
// virtio-fs: files go both ways live, ro holds on the host side even
// after the guest remounts read-write, a 10,000-file tree is all there,
// symlinks out of the tree lead nowhere on the host, a virtiofsd that
// dies leaves the VM running with the mount's error recorded, and
// nothing is left after `vm rm`.
func TestVMMounts(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	vmFixtures(t, in)
	rw, ro, outside := t.TempDir(), t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(rw, "hello"), []byte("from-host\n"), 0o644)
	os.WriteFile(filepath.Join(ro, "ro-file"), []byte("read-only\n"), 0o644)
	os.WriteFile(filepath.Join(outside, "secret"), []byte("SECRET\n"), 0o644)
	rel, _ := filepath.Rel(rw, filepath.Join(outside, "secret"))
	os.Symlink(rel, filepath.Join(rw, "esc-rel"))
	os.Symlink(filepath.Join(outside, "secret"), filepath.Join(rw, "esc-abs"))
	fileTree(t, filepath.Join(rw, "tree"), 10000)

	shape := []string{"--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--network", "none", "--vmm", "qemu"}
	var v struct {
		vmJSON
		Mounts []mountJSON `json:"mounts"`
	}
	in.jsonOut(&v, append(append([]string{"vm", "create", "--name", "m", "--json"}, shape...), "-v", rw+":/mnt/rw", "-v", ro+":/mnt/ro:ro")...)
	if len(v.Mounts) != 2 || v.Mounts[0].Kind != "virtiofs" || v.Mounts[0].PID == 0 || !v.Mounts[1].ReadOnly || v.Origin != "" {
		t.Fatalf("mounts = %+v, origin %q", v.Mounts, v.Origin)
	}
	if out := in.ok("vm", "exec", "m", "--", "cat", "/mnt/rw/hello", "/mnt/ro/ro-file"); out != "from-host\nread-only\n" {
		t.Errorf("the guest reads %q", out)
	}
	// Host to guest, live.
	os.WriteFile(filepath.Join(rw, "later"), []byte("written-later\n"), 0o644)
	if out := in.ok("vm", "exec", "m", "--", "cat", "/mnt/rw/later"); out != "written-later\n" {
		t.Errorf("a file written on the host after boot reads %q", out)
	}
	// Guest to host, owned by the caller (root here).
	in.ok("vm", "exec", "m", "--", "sh", "-c", "echo from-guest > /mnt/rw/from-guest && mkdir /mnt/rw/gdir")
	if b, err := os.ReadFile(filepath.Join(rw, "from-guest")); err != nil || string(b) != "from-guest\n" {
		t.Errorf("the guest's file on the host: %q %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(rw, "gdir")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("the guest's directory on the host: %v", err)
	}
	// ro: refused in the guest, and on the host side even when the guest
	// remounts it read-write.
	if r := in.run("vm", "exec", "m", "--", "sh", "-c", "echo x > /mnt/ro/new"); r.code == 0 || !strings.Contains(r.stderr, "Read-only file system") {
		t.Errorf("write to the ro mount: exit %d %q", r.code, r.stderr)
	}
	r := in.run("vm", "exec", "m", "--", "sh", "-c", "mount -o remount,rw /mnt/ro; echo x > /mnt/ro/new")
	if r.code == 0 {
		t.Errorf("the guest wrote to the ro mount after remounting it")
	}
	if _, err := os.Stat(filepath.Join(ro, "new")); err == nil {
		t.Errorf("a file appeared in the ro host directory")
	}
	// The whole tree, and symlinks out of it lead nowhere.
	if out := strings.TrimSpace(in.ok("vm", "exec", "m", "--", "sh", "-c", "find /mnt/rw/tree -type f | wc -l")); out != "10000" {
		t.Errorf("files in the shared tree: %s", out)
	}
	for _, l := range []string{"esc-rel", "esc-abs"} {
		if r := in.run("vm", "exec", "m", "--", "cat", "/mnt/rw/"+l); strings.Contains(r.stdout, "SECRET") {
			t.Errorf("%s reached a host file outside the shared tree", l)
		}
	}
	in.fails("shares host directories (-v): QEMU cannot snapshot a VM with virtio-fs devices", "vm", "snapshot", "m")
	// Where the mounts are: the read-only share is a read-only bind in its
	// virtiofsd's own mount namespace, never on the host; the read-write
	// share is mounted nowhere (virtiofsd serves the directory itself).
	hostMounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, d := range []string{rw, ro} {
		if mountedAt(string(hostMounts), d) != "" {
			t.Errorf("%s is mounted in the host's namespace", d)
		}
	}
	for _, c := range []struct {
		m    mountJSON
		want string
	}{{v.Mounts[0], "rw"}, {v.Mounts[1], "ro"}} {
		// virtiofsd pivots into the shared directory: that is its "/",
		// a bind of the directory, read-only for :ro.
		nsMounts, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", c.m.PID))
		if err != nil {
			t.Fatalf("virtiofsd for %s: %v", c.m.Host, err)
		}
		// (The bind's source is relative to its file system: /tmp may be
		// one of its own.)
		if src, opts := rootMount(string(nsMounts)); src == "/" || !strings.HasSuffix(c.m.Host, src) || opts != c.want {
			t.Errorf("virtiofsd for %s: its / is %s (%s), want %s (%s)", c.m.Host, src, opts, c.m.Host, c.want)
		}
		ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", c.m.PID))
		if self, _ := os.Readlink("/proc/self/ns/mnt"); ns == self {
			t.Errorf("virtiofsd for %s runs in the host's mount namespace", c.m.Host)
		}
	}
	// vm run PATH --live: the directory itself at the workspace path,
	// and the working directory there.
	if out := in.ok(append(append([]string{"vm", "run", rw, "--live", "--rm", "--name", "lv"}, shape...), "--", "sh", "-c", "pwd; cat hello")...); out != "/root/repo\nfrom-host\n" {
		t.Errorf("vm run --live printed %q", out)
	}

	// virtiofsd dies (it and its worker): the VM runs on, and says what
	// happened.
	exec.Command("pkill", "-KILL", "-f", "virtiofsd.*source="+ro).Run()
	deadline := time.Now().Add(15 * time.Second)
	for {
		in.jsonOut(&v, "vm", "show", "m", "--json")
		if v.Mounts[1].Error != "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if v.State != "running" || !strings.Contains(v.Mounts[1].Error, "virtiofsd for "+ro+" ended") || v.Mounts[0].Error != "" {
		t.Errorf("after virtiofsd died: state %s, mounts %+v", v.State, v.Mounts)
	}
	if out := in.ok("vm", "exec", "m", "--", "cat", "/mnt/rw/hello"); out != "from-host\n" {
		t.Errorf("the other mount after one died: %q", out)
	}
	// A daemon restart adopts the remaining virtiofsd.
	in.stopDaemon()
	in.jsonOut(&v, "vm", "show", "m", "--json")
	if v.Mounts[0].PID == 0 || v.Mounts[0].Error != "" || virtiofsds(rw) == "" {
		t.Errorf("after a daemon restart: %+v", v.Mounts)
	}
	in.ok("vm", "rm", "-f", "m")
	for _, d := range []string{rw, ro} {
		if left := virtiofsds(d); left != "" {
			t.Errorf("virtiofsd left after vm rm: %s", left)
		}
	}
}

// rootMount is the mount at "/" in mountinfo text: the directory it binds
// (relative to its file system's root) and "ro" or "rw".
func rootMount(mountinfo string) (src, opts string) {
	for _, l := range strings.Split(mountinfo, "\n") {
		if f := strings.Fields(l); len(f) > 5 && f[4] == "/" {
			src, opts = f[3], strings.Split(f[5], ",")[0]
		}
	}
	return src, opts
}

// mountedAt finds dir as a mount point in mountinfo text: "" when it is
// none, else "ro" or "rw" (its per-mount options).
func mountedAt(mountinfo, dir string) string {
	for _, l := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(l)
		if len(f) > 5 && f[4] == dir {
			return strings.Split(f[5], ",")[0]
		}
	}
	return ""
}

// TestVMMountBadInput: every -v mistake is one line at create, and no
// VM is made.
func TestVMMountBadInput(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	vmFixtures(t, in)
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o644)
	shape := []string{"vm", "create", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--network", "none", "--vmm", "qemu"}
	for _, c := range []struct{ want, v1, v2 string }{
		{"no such file or directory", "/nonexistent/dir:/x", ""},
		{"must be absolute", dir + ":relative", ""},
		{"cannot be / (the VM's own root)", dir + ":/", ""},
		{"two mounts at /x in the guest", dir + ":/x", dir + ":/x:ro"},
		{"not a directory", file + ":/x", ""},
		{"inside /proc", dir + ":/proc/x", ""},
		{"want HOST:GUEST or HOST:GUEST:ro", dir + ":/x:rx", ""},
		{`unknown option "fast"`, dir + ":/x:ro,fast", ""},
		{"two mounts at /x in the guest", dir + ":/x:sync", dir + ":/x"},
	} {
		args := append(append([]string{}, shape...), "-v", c.v1)
		if c.v2 != "" {
			args = append(args, "-v", c.v2)
		}
		in.fails(c.want, args...)
	}
	if names := in.vmNames(); len(names) != 0 {
		t.Errorf("VMs made by refused creates: %v", names)
	}
	// --live without a PATH.
	in.fails("--live shares PATH", "vm", "run", "--live", "--", "true")
}

// TestVMMountAsUser: a caller other than root shares a directory of
// theirs; the guest's files land on the host as that user, and a
// directory they may not write is refused for rw.
func TestVMMountAsUser(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	vmFixtures(t, in)
	// The daemon lets members of group banger in.
	exec.Command("groupadd", "-f", "banger").Run()
	gid := groupID(t, "banger")
	os.Chmod(in.home, 0o755)
	os.Chmod(in.path("run"), 0o755)
	os.Chmod(in.path("run", "bangerd.sock"), 0o666)
	mine, theirs := t.TempDir(), t.TempDir()
	os.Chmod(filepath.Dir(mine), 0o755)
	os.Chown(mine, 65534, gid)
	os.Chmod(theirs, 0o755)
	asNobody := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "banger"), append([]string{"--host", in.path("run", "bangerd.sock")}, args...)...)
		cmd.Env = append(in.env, "HOME="+mine)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: uint32(gid)}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	shape := []string{"vm", "create", "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--network", "none", "--vmm", "qemu"}
	if out, err := asNobody(append(append([]string{}, shape...), "--name", "u2", "-v", theirs+":/mnt/t")...); err == nil || !strings.Contains(out, "you may not read and write it (add :ro") {
		t.Errorf("rw mount of a directory the caller may not write: %v %s", err, out)
	}
	if out, err := asNobody(append(append([]string{}, shape...), "--name", "u1", "-v", mine+":/mnt/mine", "-v", theirs+":/mnt/t:ro", "-v", mine+":/mnt/synced:sync")...); err != nil {
		t.Fatalf("create as nobody: %v %s", err, out)
	}
	in.ok("vm", "exec", "u1", "--", "sh", "-c", "echo hi > /mnt/mine/by-guest && echo hi > /mnt/synced/by-sync")
	fi, err := os.Stat(filepath.Join(mine, "by-guest"))
	if err != nil || fi.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Errorf("the guest's file on the host: %v %+v (want owner 65534)", err, fi)
	}
	// The synced mount's host side runs as the caller too.
	hostSees(t, "the synced guest file", func() bool {
		fi, err := os.Stat(filepath.Join(mine, "by-sync"))
		return err == nil && fi.Sys().(*syscall.Stat_t).Uid == 65534
	})
	if out, _ := exec.Command("ps", "-o", "user=", "-C", "bangerd").Output(); !strings.Contains(string(out), "nobody") {
		t.Errorf("no bangerd filesync runs as nobody: %q", out)
	}
	// Files of other users look like nobody's in the guest, and may not
	// be written through the mount.
	os.WriteFile(filepath.Join(mine, "roots"), []byte("x\n"), 0o644)
	if r := in.run("vm", "exec", "u1", "--", "sh", "-c", "echo y >> /mnt/mine/roots"); r.code == 0 {
		t.Errorf("the guest wrote a root-owned host file through a mount of user nobody")
	}
	in.ok("vm", "rm", "-f", "u1")
}

func groupID(t testing.TB, name string) int {
	out, err := exec.Command("getent", "group", name).Output()
	if err != nil {
		t.Fatalf("getent group %s: %v", name, err)
	}
	n, err := strconv.Atoi(strings.Split(strings.TrimSpace(string(out)), ":")[2])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// syncHelpers lists the `bangerd filesync` processes serving dir.
func syncHelpers(dir string) string {
	out, _ := exec.Command("pgrep", "-a", "-f", "bangerd filesync --root "+dir).Output()
	return strings.TrimSpace(string(out))
}

// within20s polls ok until it holds, for up to 20 s.
func within20s(every time.Duration, ok func() bool) bool {
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(every) {
		if ok() {
			return true
		}
	}
	return false
}

// guestSees waits up to 20 s for a command in the guest to print want.
func (in *instance) guestSees(t *testing.T, vm, want string, script string) {
	t.Helper()
	var got string
	if !within20s(100*time.Millisecond, func() bool { got = in.run("vm", "exec", vm, "--", "sh", "-c", script).stdout; return got == want }) {
		t.Errorf("the guest's %q printed %q, want %q", script, got, want)
	}
}

func hostSees(t *testing.T, what string, ok func() bool) {
	t.Helper()
	if !within20s(50*time.Millisecond, ok) {
		t.Errorf("%s: not on the host after 20 s", what)
	}
}

// TestVMMountSync forces the synced kind of mount (what every Firecracker
// VM gets) on a QEMU VM: the initial copy with .git, both directions
// live, deletes, ro refusing writes in the guest, a 10,000-file tree, a
// daemon restart that syncs again, and no helper after `vm rm`.
func TestVMMountSync(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	vmFixtures(t, in)
	rw, ro := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(rw, "hello"), []byte("from-host\n"), 0o644)
	os.MkdirAll(filepath.Join(rw, ".git"), 0o755)
	os.WriteFile(filepath.Join(rw, ".git", "HEAD"), []byte("ref: refs/heads/main\n"), 0o644)
	os.WriteFile(filepath.Join(ro, "ro-file"), []byte("read-only\n"), 0o644)
	fileTree(t, filepath.Join(rw, "tree"), 10000)

	shape := []string{"--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "256M", "--network", "none", "--vmm", "qemu"}
	var v struct {
		vmJSON
		Mounts []mountJSON `json:"mounts"`
	}
	began := time.Now()
	in.jsonOut(&v, append(append([]string{"vm", "create", "--name", "s", "--json"}, shape...), "-v", rw+":/mnt/rw:sync", "-v", ro+":/mnt/ro:ro,sync")...)
	t.Logf("vm create with a 10,000-file synced mount: %v", time.Since(began))
	if len(v.Mounts) != 2 || v.Mounts[0].Kind != "sync" || v.Mounts[1].Kind != "sync" || v.Mounts[0].PID == 0 || !v.Mounts[1].ReadOnly {
		t.Fatalf("mounts = %+v", v.Mounts)
	}
	if out := in.ok("vm", "exec", "s", "--", "cat", "/mnt/rw/hello", "/mnt/rw/.git/HEAD", "/mnt/ro/ro-file"); out != "from-host\nref: refs/heads/main\nread-only\n" {
		t.Errorf("the guest reads %q", out)
	}
	if out := strings.TrimSpace(in.ok("vm", "exec", "s", "--", "sh", "-c", "find /mnt/rw/tree -type f | wc -l")); out != "10000" {
		t.Errorf("files in the synced tree: %s", out)
	}
	if out := in.ok("vm", "show", "s"); !strings.Contains(out, rw+" -> /mnt/rw (sync)") || !strings.Contains(out, "(sync, ro)") {
		t.Errorf("vm show does not say the mounts are synced:\n%s", out)
	}
	// Host to guest, guest to host (owned by the caller, root here),
	// and deletes both ways.
	os.WriteFile(filepath.Join(rw, "later"), []byte("written-later\n"), 0o644)
	in.guestSees(t, "s", "written-later\n", "cat /mnt/rw/later 2>&1")
	in.ok("vm", "exec", "s", "--", "sh", "-c", "echo from-guest > /mnt/rw/from-guest && mkdir -p /mnt/rw/gdir/sub && echo deep > /mnt/rw/gdir/sub/f")
	hostSees(t, "the guest's files", func() bool {
		b, _ := os.ReadFile(filepath.Join(rw, "gdir", "sub", "f"))
		return string(b) == "deep\n" && content(filepath.Join(rw, "from-guest")) == "from-guest\n"
	})
	if fi, err := os.Stat(filepath.Join(rw, "from-guest")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("the guest's file on the host: %v", err)
	}
	os.Remove(filepath.Join(rw, "later"))
	in.guestSees(t, "s", "gone\n", "test -e /mnt/rw/later || echo gone")
	in.ok("vm", "exec", "s", "--", "busybox", "rm", "-r", "/mnt/rw/gdir")
	hostSees(t, "the guest's rm -r", func() bool { _, err := os.Stat(filepath.Join(rw, "gdir")); return os.IsNotExist(err) })
	// ro: refused in the guest, the host untouched.
	if r := in.run("vm", "exec", "s", "--", "sh", "-c", "echo x > /mnt/ro/new"); r.code == 0 || !strings.Contains(r.stderr, "Read-only file system") {
		t.Errorf("write to the ro mount: exit %d %q", r.code, r.stderr)
	}
	os.WriteFile(filepath.Join(ro, "ro-later"), []byte("ro-later\n"), 0o644)
	in.guestSees(t, "s", "ro-later\n", "cat /mnt/ro/ro-later 2>&1")
	if ents, _ := os.ReadDir(ro); len(ents) != 2 {
		t.Errorf("the ro host directory holds %d entries, want 2", len(ents))
	}
	in.fails("has synced mounts (-v)", "vm", "snapshot", "s")

	// The helper dies: the VM runs on, the error is recorded, and the
	// sync starts again by itself.
	// (Each show decodes into a new value: omitted fields must not
	// keep an earlier decode's.)
	show := func() (s struct {
		vmJSON
		Mounts []mountJSON `json:"mounts"`
	}) {
		in.jsonOut(&s, "vm", "show", "s", "--json")
		return s
	}
	v = show()
	old := v.Mounts[0].PID
	syscall.Kill(old, syscall.SIGKILL)
	hostSees(t, "a new sync helper", func() bool {
		v = show()
		return v.Mounts[0].PID != 0 && v.Mounts[0].PID != old && v.Mounts[0].Error == ""
	})
	if v.State != "running" {
		t.Errorf("the VM is %s after its sync helper died", v.State)
	}
	if b, _ := os.ReadFile(in.path("state", "bangerd.log")); !strings.Contains(string(b), "synced mount lost") {
		t.Errorf("the daemon log does not say the sync was lost")
	}
	os.WriteFile(filepath.Join(rw, "after-kill"), []byte("resynced\n"), 0o644)
	in.guestSees(t, "s", "resynced\n", "cat /mnt/rw/after-kill 2>&1")

	// A daemon restart: the helpers end with it and start again.
	in.stopDaemon()
	os.WriteFile(filepath.Join(rw, "after-restart"), []byte("again\n"), 0o644)
	in.guestSees(t, "s", "again\n", "cat /mnt/rw/after-restart 2>&1")
	v = show()
	if v.Mounts[0].PID == 0 || v.Mounts[0].Error != "" || syncHelpers(rw) == "" {
		t.Errorf("after a daemon restart: %+v", v.Mounts)
	}
	// A stop and start: the guest's copy persists, and changes made on
	// the host meanwhile (a delete included) arrive three-way.
	in.ok("vm", "stop", "s")
	if left := syncHelpers(rw); left != "" {
		t.Errorf("sync helper left after vm stop: %s", left)
	}
	os.Remove(filepath.Join(rw, "hello"))
	os.WriteFile(filepath.Join(rw, "while-stopped"), []byte("stopped\n"), 0o644)
	in.ok("vm", "start", "s")
	if out := in.ok("vm", "exec", "s", "--", "sh", "-c", "cat /mnt/rw/while-stopped; test -e /mnt/rw/hello || echo hello-gone; cat /mnt/rw/from-guest"); out != "stopped\nhello-gone\nfrom-guest\n" {
		t.Errorf("after a restart the guest has %q", out)
	}
	in.ok("vm", "rm", "-f", "s")
	for _, d := range []string{rw, ro} {
		if left := syncHelpers(d); left != "" {
			t.Errorf("sync helper left after vm rm: %s", left)
		}
	}
}

func content(p string) string { b, _ := os.ReadFile(p); return string(b) }
