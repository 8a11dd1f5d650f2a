package integration

import (
	"archive/tar"
	"banger/internal/testenv"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"banger/internal/imagepull/imagetest"
)

type imageJSON struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Ref       string `json:"ref"`
	Digest    string `json:"digest"`
	Rootfs    string `json:"rootfs"`
	SizeBytes int64  `json:"size_bytes"`
	DiskBytes int64  `json:"disk_bytes"`
	Config    struct {
		Cmd []string `json:"cmd"`
		Env []string `json:"env"`
	} `json:"config"`
	Layers []struct {
		Digest string `json:"digest"`
	} `json:"layers"`
}

func smallImage(t *testing.T, reg *imagetest.Registry, repoTag string, files ...string) string {
	t.Helper()
	var ents []imagetest.Entry
	for _, f := range files {
		ents = append(ents, imagetest.Entry{Name: f, Body: "content of " + f})
	}
	return reg.Push(t, repoTag, imagetest.Image(t, imagetest.ImageSpec{
		Layers: [][]byte{imagetest.Layer(t, imagetest.Entry{Name: "bin/sh", Body: "#!", Mode: 0o755}), imagetest.Layer(t, ents...)},
		Config: v1.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}},
	}))
}

// randomImage pushes an image with one layer per size, each a file of
// that many random bytes (incompressible, so transfers take real time).
func randomImage(t *testing.T, reg *imagetest.Registry, repoTag string, sizes ...int) string {
	t.Helper()
	var layers [][]byte
	for i, n := range sizes {
		b := make([]byte, n)
		rand.Read(b)
		layers = append(layers, imagetest.Layer(t, imagetest.Entry{Name: fmt.Sprintf("blob%d", i), Body: string(b)}))
	}
	return reg.Push(t, repoTag, imagetest.Image(t, imagetest.ImageSpec{Layers: layers}))
}

func TestImageLifecycle(t *testing.T) {
	testenv.RequireBinary(t, "debugfs", "apt-get install e2fsprogs")
	reg := imagetest.StartRegistry(t)
	ref := smallImage(t, reg, "demo/app:1", "app/main", "app/data")
	in := newInstance(t)

	// The first command starts the daemon in the background.
	out := in.ok("image", "pull", ref, "--name", "app")
	if !strings.HasPrefix(out, "app\t") {
		t.Errorf("pull output %q", out)
	}
	pid := in.daemonPID()
	if !processAlive(pid) {
		t.Fatalf("daemon pid %d not alive", pid)
	}
	fi, err := os.Stat(in.path("run", "bangerd.sock"))
	if err != nil || fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode %v, err %v: want a 0660 socket", fi.Mode(), err)
	}

	var img imageJSON
	in.jsonOut(&img, "image", "show", "app", "--json")
	if img.Name != "app" || img.Ref != ref || !strings.HasPrefix(img.Digest, "sha256:") || !filepath.IsAbs(img.Rootfs) || img.SizeBytes <= 0 || len(img.Layers) != 2 {
		t.Errorf("show --json = %+v", img)
	}
	if strings.Join(img.Config.Cmd, " ") != "/bin/sh" {
		t.Errorf("config not recorded: %+v", img.Config)
	}
	if out, err := exec.Command("e2fsck", "-fn", img.Rootfs).CombinedOutput(); err != nil {
		t.Errorf("e2fsck %s: %v\n%s", img.Rootfs, err, out)
	}
	if out, err := exec.Command("debugfs", "-R", "cat /app/main", img.Rootfs).Output(); err != nil || string(out) != "content of app/main" {
		t.Errorf("image content %q, %v", out, err)
	}

	var list []imageJSON
	in.jsonOut(&list, "image", "list", "--json")
	if len(list) != 1 || list[0].Name != "app" {
		t.Errorf("list --json = %+v", list)
	}
	if q := in.ok("image", "ls", "-q"); q != "app\n" {
		t.Errorf("ls -q = %q", q)
	}
	if table := in.ok("image", "list"); !strings.Contains(table, "NAME") || !strings.Contains(table, "app") {
		t.Errorf("list table = %q", table)
	}

	// The same reference again is up to date; no work, no new record.
	gets := map[string]int{}
	for _, l := range img.Layers {
		gets[l.Digest] = reg.BlobGets(l.Digest)
	}
	r := in.run("image", "pull", ref, "--name", "app")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "app\t") || !strings.Contains(r.stderr, "up to date") {
		t.Errorf("re-pull: exit %d %q %q, want it to say the image is up to date", r.code, r.stdout, r.stderr)
	}
	for d, n := range gets {
		if got := reg.BlobGets(d); got != n {
			t.Errorf("re-pull fetched layer %s again (%d fetches, was %d)", d, got, n)
		}
	}
	var again imageJSON
	in.jsonOut(&again, "image", "show", "app", "--json")
	if again.ID != img.ID || again.Digest != img.Digest || again.Rootfs != img.Rootfs {
		t.Errorf("re-pull changed the record: %+v, was %+v", again, img)
	}
	if left := in.leftovers(img.ID); len(left) != 0 {
		t.Errorf("re-pull left %v", left)
	}
	// A taken name with another reference is refused.
	other := smallImage(t, reg, "demo/other:1", "x")
	in.fails("is taken by", "image", "pull", other, "--name", "app")

	// Default name: the reference's short form.
	in.ok("image", "pull", "-q", other)
	var named imageJSON
	in.jsonOut(&named, "image", "show", reg.Host+"/demo/other:1", "--json")
	if named.Ref != other {
		t.Errorf("default-named image = %+v", named)
	}

	// Removing deletes the record and the files.
	in.ok("image", "rm", "app")
	if _, err := os.Stat(img.Rootfs); !os.IsNotExist(err) {
		t.Errorf("rootfs still there after rm: %v", err)
	}
	in.fails("not found", "image", "show", "app")
	in.fails("not found", "image", "rm", "app")

	// Prune drops blobs only app used and keeps the other image's.
	var pr struct {
		RemovedBlobs int   `json:"removed_blobs"`
		FreedBytes   int64 `json:"freed_bytes"`
	}
	in.jsonOut(&pr, "image", "cache", "prune", "--json")
	if pr.RemovedBlobs != 1 {
		t.Errorf("prune removed %d blobs, want 1 (app's own layer; the shared base stays)", pr.RemovedBlobs)
	}
	if left := in.leftovers(named.ID); len(left) != 0 {
		t.Errorf("leftovers: %v", left)
	}

	// daemon stop ends the process and removes the socket.
	in.ok("daemon", "stop")
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if processAlive(pid) {
		t.Errorf("daemon %d still running after stop", pid)
	}
	if _, err := os.Stat(in.path("run", "bangerd.sock")); !os.IsNotExist(err) {
		t.Errorf("socket left after stop")
	}
	// With autostart off, a command says how to start the daemon.
	r = in.runEnv([]string{"BANGER_NO_AUTOSTART=1"}, "image", "list")
	if r.code == 0 || !strings.Contains(r.stderr, "start it with") {
		t.Errorf("no-autostart: exit %d, %q", r.code, r.stderr)
	}
	// Data survives a restart.
	in.jsonOut(&list, "image", "list", "--json")
	if len(list) != 1 {
		t.Errorf("after restart: %+v", list)
	}
}

// TestPullNewDigest pulls a reference that now points to another
// image: refused, saying to `image rm` first, with the image and its
// files as they were; after the rm the pull brings the new image.
func TestPullNewDigest(t *testing.T) {
	testenv.RequireBinary(t, "debugfs", "apt-get install e2fsprogs")
	reg := imagetest.StartRegistry(t)
	ref := smallImage(t, reg, "moving/app:1", "v1")
	in := newInstance(t)
	in.ok("image", "pull", "-q", ref, "--name", "app")
	var old imageJSON
	in.jsonOut(&old, "image", "show", "app", "--json")

	// The tag moves to a new image.
	if moved := smallImage(t, reg, "moving/app:1", "v2"); moved != ref {
		t.Fatalf("the tag moved to another reference: %s", moved)
	}
	r := in.fails("now points to", "image", "pull", ref, "--name", "app")
	if !strings.Contains(r.stderr, "banger image rm app") || !strings.Contains(r.stderr, old.Digest) {
		t.Errorf("refusal %q: want the old digest and the way out", r.stderr)
	}
	var same imageJSON
	in.jsonOut(&same, "image", "show", "app", "--json")
	if same.ID != old.ID || same.Digest != old.Digest {
		t.Errorf("the refused pull changed the record: %+v, was %+v", same, old)
	}
	if out, err := exec.Command("debugfs", "-R", "cat /v1", old.Rootfs).Output(); err != nil || string(out) != "content of v1" {
		t.Errorf("the old image's content after the refused pull: %q %v", out, err)
	}
	if left := in.leftovers(old.ID); len(left) != 0 {
		t.Errorf("the refused pull left %v", left)
	}
	// As told: rm, pull again.
	in.ok("image", "rm", "app")
	in.ok("image", "pull", "-q", ref, "--name", "app")
	var fresh imageJSON
	in.jsonOut(&fresh, "image", "show", "app", "--json")
	if fresh.Digest == old.Digest {
		t.Errorf("after rm and pull: still digest %s", fresh.Digest)
	}
	if out, err := exec.Command("debugfs", "-R", "cat /v2", fresh.Rootfs).Output(); err != nil || string(out) != "content of v2" {
		t.Errorf("the new image's content: %q %v", out, err)
	}
}

func TestPullFailuresLeaveNothing(t *testing.T) {
	testenv.RequireBinary(t, "debugfs", "apt-get install e2fsprogs")
	reg := imagetest.StartRegistry(t)
	in := newInstance(t)
	good := smallImage(t, reg, "ok/img:1", "f")
	in.ok("image", "pull", "-q", good, "--name", "keep")
	var keep imageJSON
	in.jsonOut(&keep, "image", "show", "keep", "--json")

	hostile := reg.Push(t, "bad/traversal:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{
		imagetest.Layer(t, imagetest.Entry{Name: "ok", Body: "1"}), imagetest.Layer(t, imagetest.Entry{Name: "../../etc/passwd", Body: "x"})}}))
	link := reg.Push(t, "bad/link:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{
		imagetest.Layer(t, imagetest.Entry{Name: "l", Type: tar.TypeLink, Link: "../../../../etc/shadow"})}}))
	arm := reg.Push(t, "bad/arm:1", imagetest.Image(t, imagetest.ImageSpec{Arch: "arm64", Layers: [][]byte{imagetest.Layer(t, imagetest.Entry{Name: "a", Body: "a"})}}))

	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown tag", []string{"image", "pull", reg.Host + "/ok/img:nope"}, "does not exist"},
		{"unreachable registry", []string{"image", "pull", "127.0.0.1:1/x/y:1"}, "cannot reach 127.0.0.1:1"},
		{"bad reference", []string{"image", "pull", "UPPER CASE"}, "invalid image reference"},
		{"path traversal", []string{"image", "pull", hostile}, "../../etc/passwd"},
		{"escaping link", []string{"image", "pull", link}, "outside the image"},
		{"arm64 only", []string{"image", "pull", arm}, "linux/arm64 only"},
		{"bad name", []string{"image", "pull", good, "--name", "Bad Name"}, "image name"},
		{"taken name", []string{"image", "pull", hostile, "--name", "keep"}, "is taken by"},
		{"no args", []string{"image", "pull"}, "accepts 1 arg"},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := in.with(t)
			if c.name == "no args" {
				r := in.run(c.args...)
				if r.code == 0 || !strings.Contains(r.stderr, c.want) || !strings.Contains(r.stderr, "--help") {
					t.Errorf("exit %d stderr %q", r.code, r.stderr)
				}
				return
			}
			in.fails(c.want, c.args...)
			if left := in.leftovers(keep.ID); len(left) != 0 {
				t.Errorf("leftovers after failure: %v", left)
			}
			var list []imageJSON
			in.jsonOut(&list, "image", "list", "--json")
			if len(list) != 1 || list[0].Name != "keep" {
				t.Errorf("images after failure: %+v", list)
			}
		})
	}
	if _, err := os.Stat(keep.Rootfs); err != nil {
		t.Errorf("existing image damaged: %v", err)
	}
}

func TestConcurrentPullsDoTheWorkOnce(t *testing.T) {
	testenv.RequireBinary(t, "debugfs", "apt-get install e2fsprogs")
	reg := imagetest.StartRegistry(t)
	ref := randomImage(t, reg, "conc/img:1", 4<<20)
	reg.SetDelay(300 * time.Millisecond) // keep the first pull in flight
	in := newInstance(t)
	in.daemonPID() // start the daemon before racing

	var wg sync.WaitGroup
	results := make([]result, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = in.run("image", "pull", "-q", ref, "--name", "same")
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 0 || r.stdout != "same\n" {
			t.Errorf("pull %d: exit %d %q %q", i, r.code, r.stdout, r.stderr)
		}
	}
	var img imageJSON
	in.jsonOut(&img, "image", "show", "same", "--json")
	if n := reg.BlobGets(img.Layers[0].Digest); n != 1 {
		t.Errorf("layer fetched %d times for 4 concurrent pulls, want 1", n)
	}
	if left := in.leftovers(img.ID); len(left) != 0 {
		t.Errorf("leftovers: %v", left)
	}
}

func TestKillDuringPullIsCleanedOnRestart(t *testing.T) {
	testenv.RequireBinary(t, "debugfs", "apt-get install e2fsprogs")
	reg := imagetest.StartRegistry(t)
	ref := randomImage(t, reg, "slow/img:1", 4<<20, 4<<20)
	reg.SetDelay(2 * time.Second)
	in := newInstance(t)
	pid := in.daemonPID()

	cmd := exec.Command(filepath.Join(binDir, "banger"), "image", "pull", ref)
	cmd.Env = in.env
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the pull has made its staging directory, then kill -9.
	deadline := time.Now().Add(10 * time.Second)
	for len(in.leftovers()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if len(in.leftovers()) == 0 {
		t.Fatal("pull never started")
	}
	syscall.Kill(pid, syscall.SIGKILL)
	cmd.Wait()
	for processAlive(pid) {
		time.Sleep(10 * time.Millisecond)
	}
	if len(in.leftovers()) == 0 {
		t.Fatal("kill -9 left nothing to clean: the test proves nothing")
	}
	reg.SetDelay(0)
	// The next command starts a new daemon, which reconciles.
	var list []imageJSON
	in.jsonOut(&list, "image", "list", "--json")
	if len(list) != 0 {
		t.Errorf("images after interrupted pull: %+v", list)
	}
	if left := in.leftovers(); len(left) != 0 {
		t.Errorf("restart left %v", left)
	}
	// And the pull works afterwards.
	in.ok("image", "pull", "-q", ref)
}

func TestRegistryAuthUsesTheCallersDockerConfig(t *testing.T) {
	testenv.RequireBinary(t, "debugfs", "apt-get install e2fsprogs")
	reg := imagetest.StartRegistry(t)
	reg.SetAuth("alice", "s3cret")
	ref := smallImage(t, reg, "priv/img:1", "secret")
	in := newInstance(t)
	// The daemon starts with an empty Docker config ...
	in.env = append(in.env, "DOCKER_CONFIG="+t.TempDir())
	in.daemonPID()
	r := in.run("image", "pull", ref)
	if r.code == 0 || !strings.Contains(r.stderr, "docker login") {
		t.Errorf("pull without credentials: exit %d %q", r.code, r.stderr)
	}
	// ... and the CLI brings the user's own.
	cfg := t.TempDir()
	os.WriteFile(filepath.Join(cfg, "config.json"), []byte(`{"auths":{"`+reg.Host+`":{"auth":"YWxpY2U6czNjcmV0"}}}`), 0o600)
	r = in.runEnv([]string{"DOCKER_CONFIG=" + cfg}, "image", "pull", "-q", ref)
	if r.code != 0 {
		t.Fatalf("pull with the caller's credentials: exit %d %q", r.code, r.stderr)
	}
}

func TestSocketRejectsOtherUsers(t *testing.T) {
	testenv.RequireRoot(t)
	in := newInstance(t)
	in.daemonPID()
	sock := in.path("run", "bangerd.sock")
	// Open the socket's mode so only peer credentials stand in the way.
	os.Chmod(in.home, 0o755)
	os.Chmod(in.path("run"), 0o755)
	os.Chmod(sock, 0o666)
	cmd := exec.Command(filepath.Join(binDir, "banger"), "--host", sock, "image", "list")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "may not use bangerd") {
		t.Errorf("nobody: err %v, output %q; want a rejection naming the group", err, out)
	}
	// curl --unix-socket works for root, as the design promises.
	if _, err := exec.LookPath("curl"); err == nil {
		out, err := exec.Command("curl", "-sf", "--unix-socket", sock, "http://bangerd/v1/images").Output()
		var list []json.RawMessage
		if err != nil || json.Unmarshal(out, &list) != nil {
			t.Errorf("curl: %v %q", err, out)
		}
	}
}

func TestDiskFullMidPull(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "debugfs", "apt-get install e2fsprogs")
	reg := imagetest.StartRegistry(t)
	ref := randomImage(t, reg, "big/img:1", 24<<20)
	in := newInstance(t)
	in.smallDisk(t, "20m")
	r := in.fails("no space left on device", "image", "pull", ref)
	if !strings.Contains(r.stderr, "prune") {
		t.Errorf("no advice in %q", r.stderr)
	}
	if left := in.leftovers(); len(left) != 0 {
		t.Errorf("leftovers after disk full: %v", left)
	}
	var list []imageJSON
	in.jsonOut(&list, "image", "list", "--json")
	if len(list) != 0 {
		t.Errorf("records after disk full: %+v", list)
	}
}

// smallDisk puts the instance's home on a tmpfs of the given size, so
// that a pull or import fills it up.
func (in *instance) smallDisk(t *testing.T, size string) {
	t.Helper()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "banger-test", in.home).CombinedOutput(); err != nil {
		testenv.Skip(t, fmt.Sprintf("cannot mount a tmpfs: %v %s", err, out))
	}
	t.Cleanup(func() {
		in.stopDaemon()
		exec.Command("umount", "-l", in.home).Run()
	})
}
