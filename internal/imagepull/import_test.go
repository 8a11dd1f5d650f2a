package imagepull

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"banger/internal/imagepull/imagetest"
)

// importInto imports src into a fresh directory and returns the result
// and the directory.
func importInto(tb testing.TB, p *Puller, src io.Reader, ref string, o ConfigOverride) (*Result, string, error) {
	tb.Helper()
	agent, _ := fakeAgent(tb)
	dir := tb.TempDir()
	res, err := p.Import(context.Background(), ImportRequest{Source: src, Dir: dir, Ref: ref, Config: o, Assets: GuestAgentAssets{VsockAgentBin: agent}})
	return res, dir, err
}

// rootfsLayer is a small merged-/usr root file system, as debootstrap
// and mmdebstrap write them (bin is a link to usr/bin).
func rootfsLayer(tb testing.TB) []byte {
	return tarLayer(tb,
		ent{Name: "./", Type: tar.TypeDir},
		ent{Name: "./usr/", Type: tar.TypeDir},
		ent{Name: "./usr/bin/", Type: tar.TypeDir},
		ent{Name: "./usr/bin/bash", Body: "BASH", Mode: 0o755},
		ent{Name: "./usr/bin/sudo", Body: "SUDO", Mode: 0o4755},
		ent{Name: "./bin", Type: tar.TypeSymlink, Link: "usr/bin"},
		ent{Name: "./etc/", Type: tar.TypeDir},
		ent{Name: "./etc/debian_version", Body: "12.8\n"},
		ent{Name: "./home/dev/", Type: tar.TypeDir, UID: 1000, GID: 1000, Mode: 0o750},
		ent{Name: "./home/dev/.profile", Body: "x", UID: 1000, GID: 1000},
	)
}

func compress(tb testing.TB, kind string, b []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch kind {
	case "none":
		return b
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "xz":
		w, err = xz.NewWriter(&buf)
	case "zstd":
		w, err = zstd.NewWriter(&buf)
	}
	if err != nil {
		tb.Fatal(err)
	}
	w.Write(b)
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func TestImportRootfsTarballs(t *testing.T) {
	p := newTestPuller(t)
	raw := rootfsLayer(t)
	var digests []string
	for _, kind := range []string{"none", "gzip", "xz", "zstd"} {
		t.Run(kind, func(t *testing.T) {
			res, _, err := importInto(t, p, bytes.NewReader(compress(t, kind, raw)), "", ConfigOverride{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Kind != KindRootfs {
				t.Errorf("kind = %q, want rootfs", res.Kind)
			}
			e2fsckClean(t, res.Rootfs)
			if got := catFile(t, res.Rootfs, "/etc/debian_version"); got != "12.8\n" {
				t.Errorf("debian_version = %q", got)
			}
			if st := stat(t, res.Rootfs, "/home/dev/.profile"); st.UID != 1000 || st.GID != 1000 {
				t.Errorf("owner of .profile = %d:%d, want 1000:1000", st.UID, st.GID)
			}
			if st := stat(t, res.Rootfs, "/usr/bin/sudo"); st.Mode&0o7777 != 0o4755 {
				t.Errorf("sudo mode = %o, want 4755", st.Mode&0o7777)
			}
			if st := stat(t, res.Rootfs, "/usr/local/bin/banger-vsock-agent"); !st.Exists {
				t.Error("the guest agent was not injected")
			}
			// bash is found through the bin -> usr/bin link.
			if strings.Join(res.Config.Cmd, " ") != "/bin/bash" || len(res.Config.Env) != 1 || !strings.HasPrefix(res.Config.Env[0], "PATH=") {
				t.Errorf("config = %+v, want cmd /bin/bash and a PATH", res.Config)
			}
			digests = append(digests, res.Digest)
		})
	}
	// The digest is of the uncompressed content, whatever the compression.
	for _, d := range digests {
		if d != digests[0] {
			t.Errorf("digests differ across compressions: %v", digests)
		}
	}
}

func TestImportRootfsOverridesAndSh(t *testing.T) {
	p := newTestPuller(t)
	shOnly := tarLayer(t, ent{Name: "bin/sh", Body: "SH", Mode: 0o755}, ent{Name: "etc/hostname", Body: "x"})
	res, _, err := importInto(t, p, bytes.NewReader(shOnly), "", ConfigOverride{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Config.Cmd, " ") != "/bin/sh" {
		t.Errorf("cmd = %v, want /bin/sh", res.Config.Cmd)
	}
	o := ConfigOverride{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"}, Env: []string{"PATH=/bin", "A=1"}, WorkingDir: "/srv", User: "1000"}
	res, _, err = importInto(t, p, bytes.NewReader(shOnly), "", o)
	if err != nil {
		t.Fatal(err)
	}
	want := "[/bin/sh -c] [echo hi] [PATH=/bin A=1] /srv 1000"
	if got := strings.Join([]string{strings.Join([]string{"[" + strings.Join(res.Config.Entrypoint, " ") + "]", "[" + strings.Join(res.Config.Cmd, " ") + "]", "[" + strings.Join(res.Config.Env, " ") + "]"}, " "), res.Config.WorkingDir, res.Config.User}, " "); got != want {
		t.Errorf("config = %q, want %q", got, want)
	}
}

// testImage is a two-layer image with a config of its own.
func testImage(t *testing.T) v1.Image {
	return imagetest.Image(t, imagetest.ImageSpec{
		Layers: [][]byte{
			tarLayer(t, ent{Name: "bin/sh", Body: "SH", Mode: 0o755}, ent{Name: "etc/gone", Body: "x"}, ent{Name: "srv/", Type: tar.TypeDir, UID: 33, GID: 33}),
			tarLayer(t, ent{Name: "etc/.wh.gone"}, ent{Name: "etc/motd", Body: "from layer 2"}),
		},
		Config: v1.Config{Entrypoint: []string{"/bin/sh"}, Cmd: []string{"-c", "cat /etc/motd"}, Env: []string{"A=1"}, WorkingDir: "/srv", User: "33"},
	})
}

func dockerArchive(t *testing.T, imgs map[string]v1.Image) []byte {
	t.Helper()
	refs := map[name.Reference]v1.Image{}
	for tag, img := range imgs {
		r, err := name.NewTag(tag)
		if err != nil {
			t.Fatal(err)
		}
		refs[r] = img
	}
	var buf bytes.Buffer
	if err := tarball.MultiRefWrite(refs, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func checkTestImage(t *testing.T, res *Result) {
	t.Helper()
	e2fsckClean(t, res.Rootfs)
	if got := catFile(t, res.Rootfs, "/etc/motd"); got != "from layer 2" {
		t.Errorf("motd = %q", got)
	}
	if st := stat(t, res.Rootfs, "/etc/gone"); st.Exists {
		t.Error("whiteout not applied: /etc/gone exists")
	}
	if st := stat(t, res.Rootfs, "/srv"); st.UID != 33 {
		t.Errorf("/srv uid = %d, want 33", st.UID)
	}
	if res.Config.WorkingDir != "/srv" || res.Config.User != "33" || strings.Join(res.Config.Cmd, " ") != "-c cat /etc/motd" {
		t.Errorf("config = %+v", res.Config)
	}
	if len(res.Layers) != 2 || !strings.HasPrefix(res.Layers[0].Digest, "sha256:") {
		t.Errorf("layers = %+v", res.Layers)
	}
}

func TestImportDockerArchive(t *testing.T) {
	p := newTestPuller(t)
	img := testImage(t)
	archive := dockerArchive(t, map[string]v1.Image{"example.test/app:1": img})
	for _, kind := range []string{"none", "gzip"} {
		res, _, err := importInto(t, p, bytes.NewReader(compress(t, kind, archive)), "", ConfigOverride{})
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		checkTestImage(t, res)
		cfgDigest, _ := img.ConfigName()
		if res.Kind != KindDockerArchive || res.Digest != cfgDigest.String() || res.Ref != "example.test/app:1" {
			t.Errorf("kind, digest, ref = %s %s %s; want docker-archive %s example.test/app:1", res.Kind, res.Digest, res.Ref, cfgDigest)
		}
		layers, _ := img.Layers()
		d0, _ := layers[0].Digest()
		if res.Layers[0].Digest != d0.String() {
			t.Errorf("layer digest = %s, want %s", res.Layers[0].Digest, d0)
		}
	}
}

func TestImportDockerArchiveSeveralImages(t *testing.T) {
	p := newTestPuller(t)
	other := imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{tarLayer(t, ent{Name: "bin/sh", Body: "other", Mode: 0o755})}})
	archive := dockerArchive(t, map[string]v1.Image{"example.test/app:1": testImage(t), "example.test/other:2": other})
	_, dir, err := importInto(t, p, bytes.NewReader(archive), "", ConfigOverride{})
	if !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), "example.test/app:1") || !strings.Contains(err.Error(), "--ref") {
		t.Fatalf("err = %v, want ErrAmbiguous listing the tags and naming --ref", err)
	}
	assertOnlySpool(t, dir)
	if _, _, err := importInto(t, p, bytes.NewReader(archive), "example.test/nope:1", ConfigOverride{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing --ref: err = %v, want ErrNotFound", err)
	}
	res, _, err := importInto(t, p, bytes.NewReader(archive), "example.test/app:1", ConfigOverride{})
	if err != nil {
		t.Fatal(err)
	}
	checkTestImage(t, res)
}

// assertOnlySpool fails when a failed import left files in its directory
// other than nothing at all (the caller removes the directory itself,
// but the unpacked source must already be gone).
func assertOnlySpool(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() == "src" {
			t.Errorf("failed import left its unpacked source in %s", dir)
		}
	}
}

func ociLayout(t *testing.T, idx v1.ImageIndex) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := layout.Write(dir, idx); err != nil {
		t.Fatal(err)
	}
	return dir
}

// tarDir tars a directory the way the CLI sends one.
func tarDir(t *testing.T, dir string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.AddFS(os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	return buf.Bytes()
}

func TestImportOCILayout(t *testing.T) {
	p := newTestPuller(t)
	img := testImage(t)
	arm := imagetest.Image(t, imagetest.ImageSpec{Arch: "arm64", Layers: [][]byte{tarLayer(t, ent{Name: "bin/sh", Body: "arm", Mode: 0o755})}})
	// A multi-platform index inside the layout's index, as buildx writes.
	multi := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	top := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: multi, Descriptor: v1.Descriptor{Annotations: map[string]string{annotationRefName: "3.20"}}})
	dir := ociLayout(t, top)
	res, _, err := importInto(t, p, bytes.NewReader(tarDir(t, dir)), "", ConfigOverride{})
	if err != nil {
		t.Fatal(err)
	}
	checkTestImage(t, res)
	want, _ := img.Digest()
	if res.Kind != KindOCILayout || res.Digest != want.String() {
		t.Errorf("kind, digest = %s %s; want oci-layout %s", res.Kind, res.Digest, want)
	}

	// Only arm64: refused, naming what it has.
	armOnly := ociLayout(t, mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}}))
	if _, _, err := importInto(t, p, bytes.NewReader(tarDir(t, armOnly)), "", ConfigOverride{}); !errors.Is(err, ErrNoPlatform) || !strings.Contains(err.Error(), "linux/arm64") {
		t.Errorf("arm64-only layout: err = %v, want ErrNoPlatform naming linux/arm64", err)
	}
}

func TestImportOCILayoutTamperedBlob(t *testing.T) {
	p := newTestPuller(t)
	img := testImage(t)
	dir := ociLayout(t, mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img}))
	layers, _ := img.Layers()
	d, _ := layers[1].Digest()
	blob := filepath.Join(dir, "blobs", "sha256", d.Hex)
	b, _ := os.ReadFile(blob)
	b[len(b)/2] ^= 0xff
	os.WriteFile(blob, b, 0o644)
	_, out, err := importInto(t, p, bytes.NewReader(tarDir(t, dir)), "", ConfigOverride{})
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("err = %v, want ErrDigestMismatch", err)
	}
	assertOnlySpool(t, out)

	// A layout missing a blob.
	os.Remove(blob)
	if _, _, err := importInto(t, p, bytes.NewReader(tarDir(t, dir)), "", ConfigOverride{}); !errors.Is(err, ErrBadSource) || !strings.Contains(err.Error(), "lacks blob") {
		t.Fatalf("missing blob: err = %v", err)
	}
}

func TestImportBadInput(t *testing.T) {
	p := newTestPuller(t)
	archive := dockerArchive(t, map[string]v1.Image{"example.test/app:1": testImage(t)})
	rootfs := compress(t, "gzip", rootfsLayer(t))
	cases := []struct {
		name string
		in   []byte
		want error
		text string
	}{
		{"empty", nil, ErrBadSource, "empty"},
		{"not a tar", bytes.Repeat([]byte("this is no tar archive "), 100), ErrBadSource, "not a tar archive"},
		{"truncated docker archive", archive[:len(archive)*2/3], ErrBadSource, "truncated"},
		{"docker archive cut at an entry", archive[:1024], ErrBadSource, "truncated"},
		{"rootfs cut at an entry", rootfsLayer(t)[:512], ErrBadSource, "truncated"},
		{"truncated gzip rootfs", rootfs[:len(rootfs)-20], ErrBadSource, "truncated"},
		{"hostile rootfs entry", tarLayer(t, ent{Name: "bin/sh", Body: "x", Mode: 0o755}, ent{Name: "../../etc/passwd", Body: "root::0:0"}), ErrUnsafeEntry, ".."},
		{"hostile archive entry", tarLayer(t, ent{Name: "manifest.json", Body: "[]"}, ent{Name: "../escape", Body: "x"}), ErrUnsafeEntry, ".."},
		{"archive without image", tarLayer(t, ent{Name: "manifest.json", Body: "[]"}), ErrBadSource, "lists no image"},
		{"no shell", tarLayer(t, ent{Name: "etc/hostname", Body: "x"}), ErrBadSource, "--cmd"},
		{"unknown layout", tarLayer(t, ent{Name: "etc/x", Body: "x"}, ent{Name: "manifest.json", Body: "{}"}), ErrBadSource, "docker save"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, dir, err := importInto(t, p, bytes.NewReader(c.in), "", ConfigOverride{})
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("err = %v, want %v containing %q", err, c.want, c.text)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			assertOnlySpool(t, dir)
			if _, err := os.Stat(filepath.Join(dir, "rootfs.ext4")); err == nil {
				t.Error("a failed import left rootfs.ext4")
			}
		})
	}
}
