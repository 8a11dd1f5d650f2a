package imagepull

import (
	"archive/tar"
	"banger/internal/imagepull/imagetest"
	"banger/internal/testenv"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"banger/internal/system"
)

func newTestPuller(tb testing.TB, opts ...Option) *Puller {
	tb.Helper()
	testenv.RequireBinary(tb, "debugfs", "apt-get install e2fsprogs")
	p, err := New(filepath.Join(tb.TempDir(), "blobs"), system.Runner{}, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func pullInto(tb testing.TB, p *Puller, ref string, progress func(Progress)) (*Result, string, error) {
	tb.Helper()
	agent, _ := fakeAgent(tb)
	dir := tb.TempDir()
	res, err := p.Pull(context.Background(), Request{Ref: ref, Dir: dir, Assets: GuestAgentAssets{VsockAgentBin: agent}, Progress: progress})
	return res, dir, err
}

// richLayers exercise every entry kind and layer rule the issue lists.
func richLayers(t *testing.T) [][]byte {
	deep := strings.Repeat("deep/", 60) + "bottom"
	long := strings.Repeat("n", 255)
	base := tarLayer(t,
		ent{Name: "bin/", Type: tar.TypeDir},
		ent{Name: "bin/busybox", Body: "BUSYBOX", Mode: 0o755},
		ent{Name: "bin/su", Body: "SU", Mode: 0o4755},
		ent{Name: "usr/share/grp/", Type: tar.TypeDir, Mode: 0o2775, GID: 50},
		ent{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
		ent{Name: "dev/null", Type: tar.TypeChar, Mode: 0o666, Major: 1, Minor: 3},
		ent{Name: "dev/loop0", Type: tar.TypeBlock, Mode: 0o660, Major: 7, Minor: 0, GID: 6},
		ent{Name: "run/fifo", Type: tar.TypeFifo, Mode: 0o600},
		ent{Name: "home/user/file", Body: "mine", UID: 1000, GID: 1000},
		ent{Name: "home/user/", Type: tar.TypeDir, UID: 1000, GID: 1000, Mode: 0o750}, // after its entry
		ent{Name: "etc/motd", Body: "hello", Xattrs: map[string]string{"user.banger": "xattr-value"}},
		ent{Name: "etc/gone", Body: "gone"},
		ent{Name: "var/cache/", Type: tar.TypeDir},
		ent{Name: "var/cache/a", Body: "a"},
		ent{Name: "lib64", Type: tar.TypeSymlink, Link: "usr/lib"},
		ent{Name: deep, Body: "deep"},
		ent{Name: "long/" + long, Body: "long"},
		ent{Name: "usr/local/bin/banger-vsock-agent", Body: "stale agent from the image"},
	)
	top := tarLayer(t,
		ent{Name: "bin/sh", Type: tar.TypeLink, Link: "bin/busybox"}, // hard link across layers
		ent{Name: "etc/.wh.gone"},
		ent{Name: "var/cache/.wh..wh..opq"},
		ent{Name: "var/cache/b", Body: "b"},
		ent{Name: "sbin/first", Type: tar.TypeLink, Link: "sbin/second"}, // link before target
		ent{Name: "sbin/second", Body: "2", Mode: 0o700},
	)
	return [][]byte{base, top}
}

func TestPullBuildsBootableImage(t *testing.T) {
	reg := imagetest.StartRegistry(t)
	ref := reg.Push(t, "test/rich:1", imagetest.Image(t, imagetest.ImageSpec{
		Layers: richLayers(t),
		Config: v1.Config{Entrypoint: []string{"/bin/sh"}, Cmd: []string{"-c", "echo hi"}, Env: []string{"A=1"}, WorkingDir: "/home/user", User: "1000:1000"},
	}))
	p := newTestPuller(t)
	var stages []string
	var mu sync.Mutex
	res, _, err := pullInto(t, p, ref, func(pr Progress) {
		mu.Lock()
		defer mu.Unlock()
		if len(stages) == 0 || stages[len(stages)-1] != pr.Stage {
			stages = append(stages, pr.Stage)
		}
	})
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	img := res.Rootfs
	e2fsckClean(t, img)

	if got := strings.Join(res.Config.Entrypoint, " ") + "|" + strings.Join(res.Config.Cmd, " ") + "|" + strings.Join(res.Config.Env, ",") + "|" + res.Config.WorkingDir + "|" + res.Config.User; got != "/bin/sh|-c echo hi|A=1|/home/user|1000:1000" {
		t.Errorf("config = %s", got)
	}
	if len(res.Layers) != 2 || !strings.HasPrefix(res.Digest, "sha256:") {
		t.Errorf("result = %+v", res)
	}
	for _, s := range []string{StageResolve, StageDownload, StageFlatten, StageExt4, StageInject, StageDone} {
		if !strings.Contains(strings.Join(stages, ","), s) {
			t.Errorf("stage %s never reported (saw %v)", s, stages)
		}
	}

	type want struct {
		path     string
		typ      string
		mode     int64
		uid, gid int
	}
	for _, w := range []want{
		{"/bin/busybox", "regular", 0o755, 0, 0},
		{"/bin/su", "regular", 0o4755, 0, 0},
		{"/usr/share/grp", "directory", 0o2775, 0, 50},
		{"/tmp", "directory", 0o1777, 0, 0},
		{"/dev/null", "character special", 0o666, 0, 0},
		{"/dev/loop0", "block special", 0o660, 0, 6},
		{"/run/fifo", "FIFO", 0o600, 0, 0},
		{"/home/user", "directory", 0o750, 1000, 1000},
		{"/home/user/file", "regular", 0o644, 1000, 1000},
		{"/sbin/second", "regular", 0o700, 0, 0},
		{"/lib64", "symlink", 0o777, 0, 0},
	} {
		got := stat(t, img, w.path)
		if !got.Exists || got.Type != w.typ || got.Mode != w.mode || got.UID != w.uid || got.GID != w.gid {
			t.Errorf("%s = %+v, want type %s mode %o uid %d gid %d", w.path, got, w.typ, w.mode, w.uid, w.gid)
		}
	}
	if d := stat(t, img, "/dev/null"); d.Major != 1 || d.Minor != 3 {
		t.Errorf("/dev/null is %d:%d, want 1:3", d.Major, d.Minor)
	}
	if d := stat(t, img, "/dev/loop0"); d.Major != 7 || d.Minor != 0 {
		t.Errorf("/dev/loop0 is %d:%d, want 7:0", d.Major, d.Minor)
	}
	if l := stat(t, img, "/lib64"); l.Target != "usr/lib" {
		t.Errorf("/lib64 -> %q", l.Target)
	}
	bb, sh := stat(t, img, "/bin/busybox"), stat(t, img, "/bin/sh")
	if bb.Inode != sh.Inode || bb.Links != 2 {
		t.Errorf("bin/sh inode %d, bin/busybox inode %d links %d: want one inode, two links", sh.Inode, bb.Inode, bb.Links)
	}
	first, second := stat(t, img, "/sbin/first"), stat(t, img, "/sbin/second")
	if first.Inode != second.Inode || catFile(t, img, "/sbin/first") != "2" {
		t.Errorf("link-before-target pair not one inode: %+v %+v", first, second)
	}
	if stat(t, img, "/etc/gone").Exists {
		t.Errorf("/etc/gone survived its whiteout")
	}
	if stat(t, img, "/var/cache/a").Exists || catFile(t, img, "/var/cache/b") != "b" {
		t.Errorf("opaque directory /var/cache wrong")
	}
	if v := xattr(t, img, "/etc/motd", "user.banger"); !strings.Contains(v, "xattr-value") {
		t.Errorf("xattr user.banger = %q", v)
	}
	if got := catFile(t, img, "/"+strings.Repeat("deep/", 60)+"bottom"); got != "deep" {
		t.Errorf("deep path content %q", got)
	}
	if got := catFile(t, img, "/long/"+strings.Repeat("n", 255)); got != "long" {
		t.Errorf("255-byte name content %q", got)
	}
	checkInjected(t, img)

	st := res.Stats
	// BuildExt4's headroom, less what the injected agents took.
	if st.FreeBlocks*4096 < 60<<20 || st.FreeInodes < 1000 {
		t.Errorf("headroom: %d free blocks, %d free inodes; want ≥60 MiB and ≥1000", st.FreeBlocks, st.FreeInodes)
	}
	if res.DiskBytes >= res.SizeBytes {
		t.Errorf("image not sparse: %d bytes on disk for %d apparent", res.DiskBytes, res.SizeBytes)
	}
	// Nothing but the image is left in the build directory.
	entries, _ := os.ReadDir(filepath.Dir(img))
	if len(entries) != 1 {
		t.Errorf("build dir holds %d entries, want only rootfs.ext4", len(entries))
	}
}

// checkInjected verifies every file and behaviour the seed lists.
func checkInjected(t *testing.T, img string) {
	t.Helper()
	for _, c := range []struct {
		path string
		mode int64
	}{
		{"/usr/local/bin/banger-vsock-agent", 0o755},
		{"/usr/local/libexec/banger-network-bootstrap", 0o755},
		{"/etc/systemd/system/banger-network.service", 0o644},
		{"/etc/systemd/system/banger-vsock-agent.service", 0o644},
		{"/etc/modules-load.d/banger-vsock.conf", 0o644},
	} {
		got := stat(t, img, c.path)
		if got.Type != "regular" || got.Mode != c.mode || got.UID != 0 || got.GID != 0 {
			t.Errorf("injected %s = %+v, want regular mode %o owned 0:0", c.path, got, c.mode)
		}
	}
	if got := catFile(t, img, "/usr/local/bin/banger-vsock-agent"); !strings.Contains(got, "test build") {
		t.Errorf("agent binary content = %q, want the host binary (the image's stale copy replaced)", got)
	}
	for _, unit := range []string{"banger-network.service", "banger-vsock-agent.service"} {
		l := stat(t, img, "/etc/systemd/system/multi-user.target.wants/"+unit)
		if l.Type != "symlink" || l.Target != "/etc/systemd/system/"+unit {
			t.Errorf("enable link for %s = %+v", unit, l)
		}
	}
	for _, d := range []string{"/usr/local/libexec", "/etc/systemd/system/multi-user.target.wants", "/etc/modules-load.d"} {
		if got := stat(t, img, d); got.Type != "directory" || got.UID != 0 || got.GID != 0 {
			t.Errorf("dir %s = %+v", d, got)
		}
	}
}

func TestPullReusesCachedLayers(t *testing.T) {
	reg := imagetest.StartRegistry(t)
	shared := tarLayer(t, ent{Name: "shared/file", Body: strings.Repeat("s", 4096)})
	refA := reg.Push(t, "test/a:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{shared, tarLayer(t, ent{Name: "a", Body: "a"})}}))
	refB := reg.Push(t, "test/b:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{shared, tarLayer(t, ent{Name: "b", Body: "b"})}}))
	p := newTestPuller(t)
	resA, _, err := pullInto(t, p, refA, nil)
	if err != nil {
		t.Fatal(err)
	}
	sharedDigest := resA.Layers[0].Digest
	var cached []string
	var mu sync.Mutex
	if _, _, err := pullInto(t, p, refB, func(pr Progress) {
		mu.Lock()
		defer mu.Unlock()
		if pr.Stage == StageDownload && pr.Cached {
			cached = append(cached, pr.Digest)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if n := reg.BlobGets(sharedDigest); n != 1 {
		t.Errorf("shared layer fetched %d times, want 1", n)
	}
	if len(cached) != 1 || cached[0] != sharedDigest {
		t.Errorf("cached layers reported: %v, want [%s]", cached, sharedDigest)
	}
}

func TestPullDockerHubShortNames(t *testing.T) {
	cases := map[string]string{
		"alpine":             "index.docker.io/library/alpine:latest",
		"alpine:3.20":        "index.docker.io/library/alpine:3.20",
		"someone/tool:1":     "index.docker.io/someone/tool:1",
		"ghcr.io/o/r:2":      "ghcr.io/o/r:2",
		"localhost:5000/x:y": "localhost:5000/x:y",
	}
	for in, want := range cases {
		r, err := ParseReference(in)
		if err != nil || r.Name() != want {
			t.Errorf("ParseReference(%q) = %v, %v; want %s", in, r, err, want)
		}
	}
	for _, in := range []string{"alpine", "alpine:3.20", "ghcr.io/o/r:2"} {
		r, _ := ParseReference(in)
		if got := FamiliarName(r); got != in && !(in == "alpine" && got == "alpine:latest") {
			t.Errorf("FamiliarName(%q) = %q", in, got)
		}
	}
	if r, _ := ParseReference("127.0.0.1:5000/x"); r.Context().Scheme() != "http" {
		t.Errorf("loopback registry not spoken to over http")
	}
	for _, bad := range []string{"UPPER/Case!!", "/bars/big:1", "bars//big", "a/", "ghcr.io//x", "-x"} {
		if _, err := ParseReference(bad); !errors.Is(err, ErrBadReference) {
			t.Errorf("ParseReference(%q) err = %v, want ErrBadReference", bad, err)
		}
	}
}

// staticKeychain resolves every registry to one credential.
type staticKeychain struct{ auth authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.auth, nil }

func TestPullAuth(t *testing.T) {
	reg := imagetest.StartRegistry(t)
	reg.SetAuth("alice", "s3cret")
	ref := reg.Push(t, "private/img:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{tarLayer(t, ent{Name: "x", Body: "x"})}}))

	t.Run("docker config", func(t *testing.T) {
		cfgDir := t.TempDir()
		os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(`{"auths":{"`+reg.Host+`":{"auth":"YWxpY2U6czNjcmV0"}}}`), 0o600)
		t.Setenv("DOCKER_CONFIG", cfgDir)
		if _, _, err := pullInto(t, newTestPuller(t), ref, nil); err != nil {
			t.Fatalf("pull with docker config credentials: %v", err)
		}
	})
	t.Run("credential helper", func(t *testing.T) {
		binDir, cfgDir := t.TempDir(), t.TempDir()
		helper := "#!/bin/sh\nread host\necho '{\"ServerURL\":\"'$host'\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}'\n"
		os.WriteFile(filepath.Join(binDir, "docker-credential-bangertest"), []byte(helper), 0o755)
		os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(`{"credHelpers":{"`+reg.Host+`":"bangertest"}}`), 0o600)
		t.Setenv("DOCKER_CONFIG", cfgDir)
		t.Setenv("PATH", binDir+":"+os.Getenv("PATH"))
		if _, _, err := pullInto(t, newTestPuller(t), ref, nil); err != nil {
			t.Fatalf("pull with credential helper: %v", err)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		p := newTestPuller(t, WithKeychain(staticKeychain{&authn.Basic{Username: "alice", Password: "nope"}}))
		_, _, err := pullInto(t, p, ref, nil)
		if !errors.Is(err, ErrAuth) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("err = %v, want one-line ErrAuth", err)
		}
		t.Log(err)
	})
	t.Run("no credentials", func(t *testing.T) {
		t.Setenv("DOCKER_CONFIG", t.TempDir())
		_, _, err := pullInto(t, newTestPuller(t), ref, nil)
		if !errors.Is(err, ErrAuth) {
			t.Fatalf("err = %v, want ErrAuth", err)
		}
	})
	t.Run("request auth overrides keychain", func(t *testing.T) {
		p := newTestPuller(t, WithKeychain(staticKeychain{authn.Anonymous}))
		agent, _ := fakeAgent(t)
		_, err := p.Pull(context.Background(), Request{Ref: ref, Dir: t.TempDir(), Assets: GuestAgentAssets{VsockAgentBin: agent},
			Auth: &authn.AuthConfig{Username: "alice", Password: "s3cret"}})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestPullBadInput(t *testing.T) {
	reg := imagetest.StartRegistry(t)
	good := [][]byte{tarLayer(t, ent{Name: "ok", Body: strings.Repeat("o", 100000)})}
	okRef := reg.Push(t, "test/ok:1", imagetest.Image(t, imagetest.ImageSpec{Layers: good}))
	corruptRef := reg.Push(t, "test/corrupt:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{tarLayer(t, ent{Name: "c", Body: strings.Repeat("c", 5000)})}}))
	truncRef := reg.Push(t, "test/trunc:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{tarLayer(t, ent{Name: "t", Body: strings.Repeat("t", 200000)})}}))
	hostileRef := reg.Push(t, "test/hostile:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{tarLayer(t, ent{Name: "../../etc/passwd", Body: "pwned"})}}))
	escLinkRef := reg.Push(t, "test/esclink:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{tarLayer(t, ent{Name: "h", Type: tar.TypeLink, Link: "../../../etc/shadow"})}}))
	badGzip := reg.Push(t, "test/badgzip:1", imagetest.RawLayerImage(t, append([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}, []byte(strings.Repeat("junk", 100))...)))
	armImg := imagetest.Image(t, imagetest.ImageSpec{Arch: "arm64", Layers: good})
	armRef := reg.Push(t, "test/arm:1", armImg)
	armIdx := reg.PushIndex(t, "test/armidx:1", map[string]v1.Image{"arm64": armImg, "s390x": imagetest.Image(t, imagetest.ImageSpec{Arch: "s390x", Layers: good})})
	multiIdx := reg.PushIndex(t, "test/multi:1", map[string]v1.Image{"arm64": armImg, "amd64": imagetest.Image(t, imagetest.ImageSpec{Layers: good})})

	layerDigest := func(ref string) string {
		p := newTestPuller(t)
		r, _ := ParseReference(ref)
		img, err := p.image(context.Background(), r, nil)
		if err != nil {
			t.Fatal(err)
		}
		ls, _ := img.Layers()
		d, _ := ls[0].Digest()
		return d.String()
	}
	cd := layerDigest(corruptRef)
	reg.TamperBlob(cd, func(b []byte) []byte {
		out := append([]byte(nil), b...)
		out[len(out)/2] ^= 0xff
		return out
	})
	td := layerDigest(truncRef)
	reg.TruncateBlob(td, 1000)

	cases := []struct {
		name string
		ref  string
		want error
		text string
	}{
		{"unknown tag", reg.Host + "/test/ok:nope", ErrNotFound, "does not exist"},
		{"unknown repo", reg.Host + "/nobody/here:1", ErrNotFound, "does not exist"},
		{"bad reference", "Not A Ref", ErrBadReference, "invalid image reference"},
		{"unreachable", "127.0.0.1:1/x/y:z", ErrUnreachable, "cannot reach"},
		{"digest mismatch", corruptRef, ErrDigestMismatch, "corrupt data"},
		{"truncated blob", truncRef, ErrTruncated, "pull again"},
		{"corrupt layer", badGzip, ErrBadLayer, "layer 1/1"},
		{"path traversal", hostileRef, ErrUnsafeEntry, "../../etc/passwd"},
		{"escaping hard link", escLinkRef, ErrUnsafeEntry, "outside the image"},
		{"arm64-only image", armRef, ErrNoPlatform, "arm64"},
		{"arm64-only index", armIdx, ErrNoPlatform, "linux/arm64"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newTestPuller(t)
			res, dir, err := pullInto(t, p, c.ref, nil)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, c.text) {
				t.Errorf("error %q: want one line mentioning %q", msg, c.text)
			}
			if res != nil {
				t.Errorf("result %+v on failure", res)
			}
			if _, err := os.Stat(filepath.Join(dir, "rootfs.ext4")); err == nil {
				t.Errorf("half-written rootfs.ext4 left behind")
			}
			blobs, _ := os.ReadDir(filepath.Join(p.blobs.dir, "sha256"))
			for _, b := range blobs {
				if strings.HasPrefix(b.Name(), ".tmp-") {
					t.Errorf("temp blob %s left in cache", b.Name())
				}
				if c.want == ErrDigestMismatch || c.want == ErrTruncated {
					t.Errorf("cache kept blob %s of a failed download", b.Name())
				}
			}
			t.Log(err)
		})
	}
	t.Run("multi-arch index picks amd64", func(t *testing.T) {
		if _, _, err := pullInto(t, newTestPuller(t), multiIdx, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("healthy image still pulls", func(t *testing.T) {
		if _, _, err := pullInto(t, newTestPuller(t), okRef, nil); err != nil {
			t.Fatal(err)
		}
	})
}

func TestCorruptCachedBlobIsEvicted(t *testing.T) {
	reg := imagetest.StartRegistry(t)
	ref := reg.Push(t, "test/cache:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{tarLayer(t, ent{Name: "f", Body: strings.Repeat("f", 10000)})}}))
	p := newTestPuller(t)
	res, _, err := pullInto(t, p, ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	// What a crash without fsync can leave: the right name, wrong bytes.
	blob, _ := p.Blobs().Path(res.Layers[0].Digest)
	if err := os.WriteFile(blob, []byte("\x1f\x8bgarbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = pullInto(t, p, ref, nil)
	if !errors.Is(err, ErrBadLayer) || !strings.Contains(err.Error(), "cached blob was removed") {
		t.Fatalf("err = %v, want ErrBadLayer naming the eviction", err)
	}
	if p.Blobs().Has(res.Layers[0].Digest) {
		t.Fatal("corrupt blob still cached")
	}
	if _, _, err := pullInto(t, p, ref, nil); err != nil {
		t.Fatalf("pull after eviction: %v", err)
	}
	if n := reg.BlobGets(res.Layers[0].Digest); n != 2 {
		t.Errorf("blob fetched %d times, want 2 (first pull and after eviction)", n)
	}
}
