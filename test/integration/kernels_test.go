package integration

import (
	"banger/internal/imagepull/imagetest"
	"banger/internal/testenv"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

type kernelJSON struct {
	Name      string   `json:"name"`
	Version   string   `json:"version"`
	Vmlinux   string   `json:"vmlinux"`
	Initrd    string   `json:"initrd"`
	Modules   []string `json:"modules"`
	Source    string   `json:"source"`
	AgentHash string   `json:"agent_hash"`
}

// kernelLeftovers lists staging and orphan directories under state/kernels.
func (in *instance) kernelLeftovers(known ...kernelJSON) []string {
	ok := map[string]bool{}
	for _, k := range known {
		ok[filepath.Base(filepath.Dir(k.Vmlinux))] = true
	}
	var out []string
	entries, _ := os.ReadDir(in.path("state", "kernels"))
	for _, e := range entries {
		if !ok[e.Name()] {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestKernelImportLifecycle(t *testing.T) {
	deb := testenv.KernelPackage(t)
	in := newInstance(t)
	agent := filepath.Join(t.TempDir(), "agent")
	b, _ := os.ReadFile(filepath.Join(binDir, "banger-vsock-agent"))
	os.WriteFile(agent, b, 0o755)
	in.env = append(in.env, "BANGER_AGENT_BIN="+agent)

	in.ok("kernel", "import", "cloud", "--from", deb)
	var k kernelJSON
	in.jsonOut(&k, "kernel", "show", "cloud", "--json")
	if k.Name != "cloud" || !strings.Contains(k.Version, "cloud-amd64") || k.Source != "deb" || !filepath.IsAbs(k.Vmlinux) || !filepath.IsAbs(k.Initrd) {
		t.Errorf("show --json = %+v", k)
	}
	if head, _ := os.ReadFile(k.Vmlinux); len(head) < 4 || string(head[:4]) != "\x7fELF" {
		t.Errorf("vmlinux is not an ELF kernel")
	}
	if !strings.Contains(" "+strings.Join(k.Modules, " ")+" ", " virtio_blk ") {
		t.Errorf("modules = %v", k.Modules)
	}
	var list []kernelJSON
	in.jsonOut(&list, "kernel", "list", "--json")
	if len(list) != 1 || list[0].Name != "cloud" {
		t.Errorf("list = %+v", list)
	}
	in.fails("exists", "kernel", "import", "cloud", "--from", deb)
	var def kernelJSON
	in.jsonOut(&def, "kernel", "default", "--json")
	if def.Name != "cloud" {
		t.Errorf("default kernel = %q, want the only imported one", def.Name)
	}

	// A new guest agent: the next daemon start rebuilds the initramfs.
	os.WriteFile(agent, append(b, []byte("\x00changed")...), 0o755)
	in.ok("daemon", "stop")
	var after kernelJSON
	in.jsonOut(&after, "kernel", "show", "cloud", "--json")
	sum := sha256.Sum256(append(b, []byte("\x00changed")...))
	if after.AgentHash != hex.EncodeToString(sum[:]) || after.AgentHash == k.AgentHash {
		t.Errorf("agent hash after restart %s (before %s): initramfs not rebuilt", after.AgentHash, k.AgentHash)
	}

	in.ok("kernel", "rm", "cloud")
	if _, err := os.Stat(filepath.Dir(k.Vmlinux)); !os.IsNotExist(err) {
		t.Errorf("kernel directory left after rm")
	}
	in.fails("not found", "kernel", "show", "cloud")
	if left := in.kernelLeftovers(); len(left) != 0 {
		t.Errorf("leftovers: %v", left)
	}
}

func TestKernelImportBadInput(t *testing.T) {
	in := newInstance(t)
	junk := filepath.Join(t.TempDir(), "vmlinuz-junk")
	os.WriteFile(junk, []byte(strings.Repeat("not a kernel ", 1000)), 0o644)
	in.fails("not a kernel", "kernel", "import", "junk", "--from", junk)
	in.fails("no such file", "kernel", "import", "gone", "--from", "/nonexistent/vmlinuz")
	in.fails("kernel name", "kernel", "import", "Bad_Name!", "--from", junk)
	r := in.run("kernel", "import", "x")
	if r.code == 0 || !strings.Contains(r.stderr, "--from PATH is required") {
		t.Errorf("missing --from: %q", r.stderr)
	}
	if left := in.kernelLeftovers(); len(left) != 0 {
		t.Errorf("leftovers: %v", left)
	}
	// No kernels and nothing installed: say which command gets one.
	in.env = append(in.env, "BANGER_HOST_ROOT="+t.TempDir())
	in.ok("daemon", "stop")
	in.fails("banger kernel pull debian-12-cloud", "kernel", "default")
}

func TestKernelDefaultImportsInstalledKernel(t *testing.T) {
	deb := testenv.KernelPackage(t)
	root := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v %s", err, out)
	}
	in := newInstance(t)
	in.env = append(in.env, "BANGER_HOST_ROOT="+root)
	var k kernelJSON
	in.jsonOut(&k, "kernel", "default", "--json")
	if k.Name != "host" || k.Initrd == "" || len(k.Modules) == 0 || k.Source != "bzImage" {
		t.Errorf("default kernel from the installed one = %+v", k)
	}
}

func TestKernelPullFromCatalog(t *testing.T) {
	deb := testenv.KernelPackage(t)
	data, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/k.deb" {
			http.NotFound(w, r)
			return
		}
		w.Write(data)
	}))
	catalog := filepath.Join(t.TempDir(), "catalog.json")
	writeCatalog := func(url string) {
		os.WriteFile(catalog, []byte(fmt.Sprintf(`[
		{"name":"test-cloud","description":"test","url":"%[1]s/k.deb","size":%[2]d,"sha256":"%[3]s"},
		{"name":"bad-sum","description":"test","url":"%[1]s/k.deb","size":%[2]d,"sha256":"%[4]s"},
		{"name":"gone","description":"test","url":"%[1]s/missing.deb","size":1,"sha256":"%[5]s"}]`,
			url, len(data), hex.EncodeToString(sum[:]), strings.Repeat("0", 64), strings.Repeat("1", 64))), 0o644)
	}
	writeCatalog(srv.URL)
	in := newInstance(t)
	in.env = append(in.env, "BANGER_KERNEL_CATALOG="+catalog)

	var entries []struct{ Name string }
	in.jsonOut(&entries, "kernel", "catalog", "--json")
	if len(entries) < 4 || entries[len(entries)-1].Name != "debian-12-cloud" {
		t.Errorf("catalog = %+v, want the test entries and the built-in one", entries)
	}
	if out := in.ok("kernel", "pull", "-q", "test-cloud"); out != "test-cloud\n" {
		t.Errorf("pull -q = %q", out)
	}
	var k kernelJSON
	in.jsonOut(&k, "kernel", "show", "test-cloud", "--json")
	if k.Source != "catalog:test-cloud" || k.Initrd == "" {
		t.Errorf("pulled kernel = %+v", k)
	}
	// Downloaded kernels are kept by hash: after rm, a pull downloads
	// nothing, even with the server gone.
	in.ok("kernel", "rm", "test-cloud")
	srv.Close()
	if out := in.ok("kernel", "pull", "-q", "test-cloud"); out != "test-cloud\n" {
		t.Errorf("pull from the cache = %q", out)
	}
	in.jsonOut(&k, "kernel", "show", "test-cloud", "--json")
	srv = httptest.NewServer(srv.Config.Handler)
	defer srv.Close()
	writeCatalog(srv.URL)
	in.fails("sha256", "kernel", "pull", "bad-sum")
	in.fails("HTTP 404", "kernel", "pull", "gone")
	in.fails("no kernel \"nope\" in the catalog", "kernel", "pull", "nope")
	if left := in.kernelLeftovers(k); len(left) != 0 {
		t.Errorf("leftovers: %v", left)
	}
}

func TestKernelPullFromOCIImage(t *testing.T) {
	deb := testenv.KernelPackage(t)
	in := newInstance(t)
	// The image carries an ELF vmlinux (banger's own extraction of the
	// package's bzImage) and the package's modules.
	in.ok("kernel", "import", "src", "--from", deb)
	var src kernelJSON
	in.jsonOut(&src, "kernel", "show", "src", "--json")
	root := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v %s", err, out)
	}
	os.RemoveAll(filepath.Join(root, "boot"))
	os.MkdirAll(filepath.Join(root, "boot"), 0o755)
	vmlinux, _ := os.ReadFile(src.Vmlinux)
	os.WriteFile(filepath.Join(root, "boot", "vmlinux"), vmlinux, 0o644)
	layer, err := exec.Command("tar", "-C", root, "-cf", "-", "boot", "lib").Output()
	if err != nil {
		t.Fatal(err)
	}
	reg := imagetest.StartRegistry(t)
	ref := reg.Push(t, "kernels/cloud:6.1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{layer}, GzipLevel: 1}))
	noKernel := smallImage(t, reg, "kernels/empty:1", "etc/motd")

	if out := in.ok("kernel", "pull", "-q", ref); out != "cloud-6.1\n" {
		t.Errorf("pull -q = %q, want the name made from the reference", out)
	}
	var k kernelJSON
	in.jsonOut(&k, "kernel", "show", "cloud-6.1", "--json")
	if k.Source != "oci:"+ref || k.Version != src.Version || k.Initrd == "" || strings.Join(k.Modules, " ") != strings.Join(src.Modules, " ") {
		t.Errorf("OCI kernel = %+v\nwant the same kernel and modules as %+v", k, src)
	}
	in.fails("has no /boot/vmlinux", "kernel", "pull", noKernel, "--as", "empty")
	if left := in.kernelLeftovers(src, k); len(left) != 0 {
		t.Errorf("leftovers: %v", left)
	}
}

// TestKernelImportAsCaller: bangerd runs as root, its callers need not.
// An import reads the kernel file and the modules directory found next
// to it as the caller, so a member of group banger cannot have root read
// a file for them: not one in a directory they may not enter, not a
// modules directory they may not read, nor one of any size.
func TestKernelImportAsCaller(t *testing.T) {
	deb := testenv.KernelPackage(t)
	alice := testUser(t, "banger-alice")
	in := newInstance(t)
	in.ok("daemon", "status")
	in.shareWithGroup()

	// An installed kernel in alice's home: boot/vmlinuz-V and
	// lib/modules/V, hers to read.
	tree := filepath.Join(alice.home, "ktree")
	os.RemoveAll(tree)
	if out, err := exec.Command("dpkg-deb", "-x", deb, tree).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v %s", err, out)
	}
	t.Cleanup(func() { os.RemoveAll(tree) })
	vmlinuz, _ := filepath.Glob(filepath.Join(tree, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		t.Fatalf("vmlinuz in the package: %v", vmlinuz)
	}
	version := strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	exec.Command("chown", "-R", fmt.Sprintf("%d:%d", alice.uid, alice.gid), tree).Run()

	// A world-readable kernel in a directory closed to her.
	closed := t.TempDir()
	os.Chmod(closed, 0o700)
	hidden := filepath.Join(closed, "vmlinuz-hidden")
	b, err := os.ReadFile(vmlinuz[0])
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(hidden, b, 0o644)
	in.failsAs(alice, "you may not read it", "kernel", "import", "hidden", "--from", hidden)

	// Her own kernel, but lib/modules/V is a link into a root-only copy
	// of the modules: the derived directory is read as her too.
	mods := filepath.Join(tree, "lib", "modules", version)
	rootMods := filepath.Join(closed, "modules")
	if err := os.Rename(mods, rootMods); err != nil {
		t.Fatal(err)
	}
	exec.Command("chown", "-R", "0:0", rootMods).Run()
	os.Symlink(rootMods, mods)
	in.failsAs(alice, "you may not read it", "kernel", "import", "linked", "--from", vmlinuz[0])

	// More than any kernel: refused before it is read.
	huge := filepath.Join(alice.home, "vmlinuz-huge")
	f, _ := os.Create(huge)
	f.Truncate(3 << 30)
	f.Close()
	os.Chown(huge, alice.uid, alice.gid)
	t.Cleanup(func() { os.Remove(huge) })
	in.failsAs(alice, "too large", "kernel", "import", "huge", "--from", huge)

	// Her own complete tree imports, modules and all.
	os.Remove(mods)
	if err := os.Rename(rootMods, mods); err != nil {
		t.Fatal(err)
	}
	exec.Command("chown", "-R", fmt.Sprintf("%d:%d", alice.uid, alice.gid), mods).Run()
	if r := in.runAs(alice, "kernel", "import", "hers", "--from", vmlinuz[0]); r.code != 0 {
		t.Fatalf("import of her own kernel: exit %d: %s", r.code, r.stderr)
	}
	var k kernelJSON
	in.jsonOut(&k, "kernel", "show", "hers", "--json")
	if len(k.Modules) == 0 || k.Initrd == "" {
		t.Errorf("her kernel came without its modules: %+v", k)
	}
	var all []kernelJSON
	in.jsonOut(&all, "kernel", "list", "--json")
	if len(all) != 1 {
		t.Errorf("kernels after the refused imports: %+v", all)
	}
	if left := in.kernelLeftovers(k); len(left) != 0 {
		t.Errorf("leftovers: %v", left)
	}
}
