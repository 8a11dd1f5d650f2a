package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/ulikunitz/xz"

	"banger/internal/imagepull/imagetest"
	"banger/internal/testenv"
)

// importJSON is what `image show --json` says of an imported image.
type importJSON struct {
	ID, Name, Ref, Digest, Source, Rootfs string
	Config                                struct {
		Entrypoint, Cmd, Env []string
		WorkingDir           string `json:"working_dir"`
	}
}

// writeDockerArchive writes a docker save archive of the images by tag.
func writeDockerArchive(t *testing.T, path string, imgs map[string]v1.Image) {
	t.Helper()
	refs := map[name.Reference]v1.Image{}
	for tag, img := range imgs {
		r, err := name.NewTag(tag)
		if err != nil {
			t.Fatal(err)
		}
		refs[r] = img
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := tarball.MultiRefWrite(refs, f); err != nil {
		t.Fatal(err)
	}
}

func xzBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// TestImageImportEverySource imports each kind of source through the CLI
// as a user would (file, standard input, directory) and checks the bad
// ones fail with one line and leave nothing.
func TestImageImportEverySource(t *testing.T) {
	testenv.RequireBinary(t, "debugfs", "apt-get install e2fsprogs")
	in := newInstance(t)
	dir := t.TempDir()
	layer := imagetest.Layer(t, imagetest.Entry{Name: "bin/sh", Body: "#!x", Mode: 0o755}, imagetest.Entry{Name: "etc/motd", Body: "hello"})
	img := imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{layer}, Config: v1.Config{Cmd: []string{"/bin/sh"}, WorkingDir: "/srv"}})
	other := imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{imagetest.Layer(t, imagetest.Entry{Name: "bin/sh", Body: "other", Mode: 0o755})}})

	// A docker save archive, named after its file.
	archive := filepath.Join(dir, "app.tar")
	writeDockerArchive(t, archive, map[string]v1.Image{"example.test/app:1": img})
	in.ok("image", "import", "-q", archive)
	var got importJSON
	in.jsonOut(&got, "image", "show", "app", "--json")
	cfgName, _ := img.ConfigName()
	if got.Source != "docker-archive "+archive || got.Ref != "example.test/app:1" || got.Digest != cfgName.String() || got.Config.WorkingDir != "/srv" {
		t.Errorf("image show app: %+v", got)
	}

	// The same, gzip'd, on standard input, with a config override.
	raw, _ := os.ReadFile(archive)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	if code, _, stderr := in.code(bytes.NewReader(gz.Bytes()), "image", "import", "-", "--name", "app2", "--cmd", `["/bin/sh","-c","cat /etc/motd"]`, "-e", "A=1"); code != 0 {
		t.Fatalf("import - : exit %d: %s", code, stderr)
	}
	in.jsonOut(&got, "image", "show", "app2", "--json")
	if got.Source != "docker-archive -" || strings.Join(got.Config.Cmd, " ") != "/bin/sh -c cat /etc/motd" || strings.Join(got.Config.Env, " ") != "A=1" {
		t.Errorf("image show app2: %+v", got)
	}

	// An OCI layout directory, tarred by the CLI.
	oci := filepath.Join(dir, "layout")
	if _, err := layout.Write(oci, mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})); err != nil {
		t.Fatal(err)
	}
	in.ok("image", "import", "-q", oci, "--name", "oci")
	in.jsonOut(&got, "image", "show", "oci", "--json")
	want, _ := img.Digest()
	if got.Source != "oci-layout "+oci || got.Digest != want.String() {
		t.Errorf("image show oci: %+v", got)
	}

	// A root file system tarball, xz, on standard input.
	if code, _, stderr := in.code(bytes.NewReader(xzBytes(t, layer)), "image", "import", "-", "--name", "root"); code != 0 {
		t.Fatalf("import rootfs: exit %d: %s", code, stderr)
	}
	in.jsonOut(&got, "image", "show", "root", "--json")
	if !strings.HasPrefix(got.Source, "rootfs") || strings.Join(got.Config.Cmd, " ") != "/bin/sh" {
		t.Errorf("image show root: %+v", got)
	}
	for _, n := range []string{"app", "app2", "oci", "root"} {
		in.jsonOut(&got, "image", "show", n, "--json")
		if out, err := exec.Command("e2fsck", "-fn", got.Rootfs).CombinedOutput(); err != nil {
			t.Errorf("e2fsck %s: %v\n%s", n, err, out)
		}
		if out, _ := exec.Command("debugfs", "-R", "cat /etc/motd", got.Rootfs).Output(); string(out) != "hello" {
			t.Errorf("%s: /etc/motd = %q", n, out)
		}
	}
	var before []imageJSON
	in.jsonOut(&before, "image", "list", "--json")
	ids := []string{}
	for _, i := range before {
		ids = append(ids, i.ID)
	}

	// Bad input: one line each, nothing left behind, images untouched.
	several := filepath.Join(dir, "several.tar")
	writeDockerArchive(t, several, map[string]v1.Image{"example.test/app:1": img, "example.test/other:2": other})
	truncated := filepath.Join(dir, "cut.tar")
	os.WriteFile(truncated, raw[:len(raw)/2], 0o644)
	notTar := filepath.Join(dir, "notes.txt")
	os.WriteFile(notTar, bytes.Repeat([]byte("plain text, no archive\n"), 200), 0o644)
	unreadable := filepath.Join(dir, "missing.tar")
	plainDir := t.TempDir()
	cases := []struct {
		want string
		args []string
	}{
		{"holds 2 images (example.test/app:1, example.test/other:2): pick one with --ref", []string{"image", "import", several, "--name", "sev"}},
		{"has no image example.test/nope:3", []string{"image", "import", several, "--ref", "example.test/nope:3"}},
		{"the input is truncated", []string{"image", "import", truncated, "--name", "cut"}},
		{"not a tar archive", []string{"image", "import", notTar, "--name", "txt"}},
		{"already exists: image \"app\"", []string{"image", "import", archive, "--name", "app"}},
		{"cannot read " + unreadable, []string{"image", "import", unreadable}},
		{"no OCI image layout", []string{"image", "import", plainDir, "--name", "d"}},
		{"needs a name", []string{"image", "import", "-"}},
		{"--env \"NOEQUALS\": want KEY=VALUE", []string{"image", "import", archive, "--name", "envbad", "-e", "NOEQUALS"}},
	}
	for _, c := range cases {
		in.fails(c.want, c.args...)
	}
	// --ref picks one of several.
	in.ok("image", "import", "-q", several, "--ref", "example.test/other:2")
	in.jsonOut(&got, "image", "show", "example.test/other:2", "--json")
	ids = append(ids, got.ID)
	if left := in.leftovers(ids...); len(left) != 0 {
		t.Errorf("leftovers: %v", left)
	}
	var after []imageJSON
	in.jsonOut(&after, "image", "list", "--json")
	if len(after) != len(before)+1 {
		t.Errorf("images after the failures: %d, want %d", len(after), len(before)+1)
	}
	digests := map[string]string{}
	for _, i := range after {
		digests[i.Name] = i.Digest
	}
	for _, i := range before {
		if digests[i.Name] != i.Digest {
			t.Errorf("image %s changed: %s, was %s", i.Name, digests[i.Name], i.Digest)
		}
	}
}

// TestImageImportStreamsWhatOnlyTheCallerSees imports a file that exists
// only in the CLI's private mount namespace: bangerd reads the stream,
// never the path.
func TestImageImportStreamsWhatOnlyTheCallerSees(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "unshare", "apt-get install util-linux")
	in := newInstance(t)
	priv := filepath.Join(t.TempDir(), "private")
	os.Mkdir(priv, 0o755)
	archive := filepath.Join(t.TempDir(), "x.tar")
	writeDockerArchive(t, archive, map[string]v1.Image{"example.test/app:1": imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{
		imagetest.Layer(t, imagetest.Entry{Name: "bin/sh", Body: "x", Mode: 0o755})}})})
	in.ok("daemon", "status") // the daemon starts outside the namespace
	script := `set -e; mount -t tmpfs banger-private "$1"; cp "$2" "$1/only-here.tar"; chmod 600 "$1/only-here.tar"; exec banger image import "$1/only-here.tar" --name priv -q`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", priv, archive)
	cmd.Env = in.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("import inside a private mount namespace: %v\n%s", err, out)
	}
	if ents, _ := os.ReadDir(priv); len(ents) != 0 {
		t.Fatalf("the private file is visible outside the namespace: %v", ents)
	}
	var got importJSON
	in.jsonOut(&got, "image", "show", "priv", "--json")
	if got.Source != "docker-archive "+priv+"/only-here.tar" {
		t.Errorf("image show priv: %+v", got)
	}
}

// TestDiskFullMidImport imports a tarball larger than the disk.
func TestDiskFullMidImport(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "debugfs", "apt-get install e2fsprogs")
	in := newInstance(t)
	in.smallDisk(t, "20m")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "bin/sh", Mode: 0o755, Size: 2, Typeflag: tar.TypeReg})
	tw.Write([]byte("sh"))
	big := make([]byte, 24<<20)
	rand.Read(big)
	tw.WriteHeader(&tar.Header{Name: "big", Mode: 0o644, Size: int64(len(big)), Typeflag: tar.TypeReg})
	tw.Write(big)
	tw.Close()
	src := filepath.Join(t.TempDir(), "big.tar")
	os.WriteFile(src, buf.Bytes(), 0o644)
	in.fails("no space left on device", "image", "import", src)
	if left := in.leftovers(); len(left) != 0 {
		t.Errorf("leftovers after disk full: %v", left)
	}
	var list []imageJSON
	in.jsonOut(&list, "image", "list", "--json")
	if len(list) != 0 {
		t.Errorf("records after disk full: %+v", list)
	}
}

// TestDaemonRefusesDynamicAgent points bangerd at a dynamically linked
// binary as its guest agent: it must not start, and say how to fix it.
func TestDaemonRefusesDynamicAgent(t *testing.T) {
	testenv.RequireBinary(t, "ls", "coreutils")
	dynamic, _ := exec.LookPath("ls")
	in := newInstance(t)
	r := in.runEnv([]string{"BANGER_AGENT_BIN=" + dynamic}, "daemon", "status")
	if r.code == 0 || !strings.Contains(r.stderr, "guest agent is not statically linked") || !strings.Contains(r.stderr, "CGO_ENABLED=0") {
		t.Errorf("daemon with a dynamic agent: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestVMRunImportedImages boots images that came from a root file system
// tarball and from an OCI layout, not from a registry.
func TestVMRunImportedImages(t *testing.T) {
	in := newInstance(t)
	vmFixtures(t, in)
	layer := busyboxLayer(t)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(layer)
	zw.Close()
	if code, _, stderr := in.code(bytes.NewReader(gz.Bytes()), "image", "import", "-", "--name", "bbroot"); code != 0 {
		t.Fatalf("import busybox rootfs: exit %d: %s", code, stderr)
	}
	oci := filepath.Join(t.TempDir(), "bb.oci")
	img := imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{layer}, Config: v1.Config{Env: []string{"FROM=oci"}}})
	if _, err := layout.Write(oci, mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img})); err != nil {
		t.Fatal(err)
	}
	in.ok("image", "import", "-q", oci, "--name", "bboci")
	for image, want := range map[string]string{"bbroot": "root:x:0:0 -", "bboci": "root:x:0:0 oci"} {
		code, out, stderr := in.code(nil, "vm", "run", "--rm", "--image", image, "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--network", "none", "--vmm", "qemu",
			"--", "sh", "-c", `echo "$(cut -d: -f1-4 /etc/passwd) ${FROM:--}"`)
		if code != 0 || strings.TrimSpace(out) != want {
			t.Errorf("vm run --image %s: exit %d, stdout %q (want %q), stderr %q", image, code, out, want, stderr)
		}
	}
}
