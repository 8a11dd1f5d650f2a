package kernel

import (
	"banger/internal/testenv"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
)

func fakeAgent(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(p, []byte("#!/bin/sh\necho agent\n"), 0o755)
	return p
}

// cpioEntry is one entry of a newc archive.
type cpioEntry struct {
	mode       uint32
	rmaj, rmin uint32
	data       []byte
}

func readInitramfs(t *testing.T, path string) (map[string]cpioEntry, []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("initramfs is not gzip: %v", err)
	}
	raw, _ := io.ReadAll(zr)
	out := map[string]cpioEntry{}
	var order []string
	field := func(b []byte, i int) uint32 {
		v, err := strconv.ParseUint(string(b[6+8*i:6+8*i+8]), 16, 32)
		if err != nil {
			t.Fatalf("bad cpio header: %v", err)
		}
		return uint32(v)
	}
	pad := func(n int) int { return (n + 3) &^ 3 }
	for off := 0; off < len(raw); {
		h := raw[off:]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad cpio magic at %d", off)
		}
		size, nameLen := int(field(h, 6)), int(field(h, 11))
		name := string(h[110 : 110+nameLen-1])
		dataOff := off + pad(110+nameLen)
		if name == "TRAILER!!!" {
			break
		}
		out[name] = cpioEntry{mode: field(h, 1), rmaj: field(h, 9), rmin: field(h, 10), data: raw[dataOff : dataOff+size]}
		order = append(order, name)
		off = dataOff + pad(size)
	}
	return out, order
}

func TestImportDebianPackage(t *testing.T) {
	deb := testenv.KernelPackage(t)
	dir := t.TempDir()
	agent := fakeAgent(t)
	b, err := Import(deb, dir, agent)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.Version, "cloud-amd64") || b.Source != "deb" {
		t.Errorf("version %q source %q", b.Version, b.Source)
	}
	head := make([]byte, 4)
	f, _ := os.Open(b.Vmlinux)
	f.Read(head)
	f.Close()
	if string(head) != "\x7fELF" {
		t.Errorf("vmlinux is not ELF: % x", head)
	}
	pos := map[string]int{}
	for i, m := range b.Modules {
		pos[m] = i
	}
	for _, pair := range [][2]string{{"virtio", "virtio_mmio"}, {"virtio_ring", "virtio_blk"}, {"failover", "net_failover"}, {"net_failover", "virtio_net"},
		{"vsock", "vmw_vsock_virtio_transport_common"}, {"vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}} {
		a, okA := pos[pair[0]]
		z, okZ := pos[pair[1]]
		if !okA || !okZ || a > z {
			t.Errorf("%s must load before %s: modules %v", pair[0], pair[1], b.Modules)
		}
	}
	for _, m := range b.Modules {
		if m == "ext4" {
			t.Errorf("ext4 is built into this kernel, yet packed as a module")
		}
	}
	want, _ := HashFile(agent)
	if b.AgentHash != want {
		t.Errorf("agent hash %s, want %s", b.AgentHash, want)
	}

	ents, order := readInitramfs(t, b.Initrd)
	if string(ents["init"].data) != "#!/bin/sh\necho agent\n" || ents["init"].mode != 0o100755 {
		t.Errorf("/init = %+v", ents["init"])
	}
	if c := ents["dev/console"]; c.mode != 0o020600 || c.rmaj != 5 || c.rmin != 1 {
		t.Errorf("/dev/console = %+v", c)
	}
	list := strings.Fields(string(ents["etc/banger/modules"].data))
	if len(list) != len(b.Modules) {
		t.Fatalf("module list %v vs %v", list, b.Modules)
	}
	seen := map[string]bool{}
	for _, name := range order {
		dir := filepath.Dir(name)
		if dir != "." && !seen[dir] {
			t.Errorf("%s comes before its directory", name)
		}
		seen[name] = true
	}
	for _, rel := range list {
		e, ok := ents["lib/modules/"+b.Version+"/"+rel]
		if !ok || !bytes.HasPrefix(e.data, []byte("\x7fELF")) {
			t.Errorf("module %s missing from the initramfs", rel)
		}
	}
	fi, _ := os.Stat(b.Initrd)
	t.Logf("kernel %s: %d modules, initramfs %d KiB", b.Version, len(b.Modules), fi.Size()>>10)

	// A new agent rebuilds the initramfs from the kept modules alone.
	os.WriteFile(agent, []byte("new agent"), 0o755)
	if err := BuildInitramfs(dir, agent, b); err != nil {
		t.Fatal(err)
	}
	if ents, _ := readInitramfs(t, b.Initrd); string(ents["init"].data) != "new agent" {
		t.Errorf("rebuilt initramfs has the old agent")
	}
}

func TestImportBzImageAndVmlinux(t *testing.T) {
	deb := testenv.KernelPackage(t)
	work := t.TempDir()
	c, err := readDebPath(deb, work)
	if err != nil {
		t.Fatal(err)
	}
	// A bzImage from somewhere other than /boot: no modules to pack.
	b, err := Import(c.kernel, t.TempDir(), fakeAgent(t))
	if err != nil {
		t.Fatal(err)
	}
	if b.Source != "bzImage" || b.Initrd != "" || len(b.Modules) != 0 || b.Version != c.version {
		t.Errorf("bzImage import = %+v (version from package %q)", b, c.version)
	}
	v, err := Import(b.Vmlinux, t.TempDir(), fakeAgent(t))
	if err != nil {
		t.Fatal(err)
	}
	if v.Source != "vmlinux" || v.Version != b.Version {
		t.Errorf("vmlinux import = %+v", v)
	}
}

func TestImportRejects(t *testing.T) {
	notKernel := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(notKernel, []byte(strings.Repeat("hello ", 1000)), 0o644)
	if _, err := Import(notKernel, t.TempDir(), fakeAgent(t)); !errors.Is(err, ErrNotKernel) {
		t.Errorf("text file: err = %v, want ErrNotKernel", err)
	}
	// A boot header whose payload is cut short.
	deb := testenv.KernelPackage(t)
	c, err := readDebPath(deb, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(c.kernel)
	cut := filepath.Join(t.TempDir(), "vmlinuz-cut")
	os.WriteFile(cut, raw[:len(raw)/2], 0o644)
	if _, err := Import(cut, t.TempDir(), fakeAgent(t)); !errors.Is(err, ErrNotKernel) || !strings.Contains(err.Error(), "truncated?") {
		t.Errorf("truncated bzImage: err = %v, want ErrNotKernel saying it is truncated", err)
	}
	// Modules without virtio_blk's dependency, and without virtio_net.
	mods := filepath.Join(t.TempDir(), "modules")
	for _, m := range []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "overlay", "virtio_ring", "failover", "net_failover"} {
		matches, _ := filepath.Glob(filepath.Join(c.modulesDir, "kernel", "*", "*", m+".ko"))
		matches2, _ := filepath.Glob(filepath.Join(c.modulesDir, "kernel", "*", "*", "*", m+".ko"))
		for _, p := range append(matches, matches2...) {
			rel, _ := filepath.Rel(c.modulesDir, p)
			copyFile(os.Open, p, filepath.Join(mods, rel))
		}
	}
	copyFile(os.Open, filepath.Join(c.modulesDir, "modules.builtin"), filepath.Join(mods, "modules.builtin"))
	idx, err := indexModules(mods, os.Open)
	if err != nil {
		t.Fatal(err)
	}
	_, err = idx.resolve(requiredDrivers, optionalDrivers)
	if !errors.Is(err, ErrMissingModule) || !strings.Contains(err.Error(), "needs virtio") {
		t.Errorf("missing dependency: err = %v", err)
	}
	os.Remove(filepath.Join(mods, "kernel/drivers/net/virtio_net.ko"))
	idx2, _ := indexModules(mods, os.Open)
	_, err = idx2.resolve([]string{"virtio_net"}, nil)
	if !errors.Is(err, ErrMissingModule) || !strings.Contains(err.Error(), "neither built in nor a module") {
		t.Errorf("missing driver: err = %v", err)
	}
}

// BenchmarkBuildInitramfs rebuilds a Debian cloud kernel's initramfs (12
// modules and the agent) from the files an import keeps; it is what the
// daemon does when the agent changes.
func BenchmarkBuildInitramfs(b *testing.B) {
	deb := testenv.KernelPackage(b)
	dir := b.TempDir()
	agent := filepath.Join(b.TempDir(), "agent")
	// A realistic agent size: this test binary.
	self, _ := os.Executable()
	raw, _ := os.ReadFile(self)
	os.WriteFile(agent, raw[:min(len(raw), 4<<20)], 0o755)
	built, err := Import(deb, dir, agent)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := BuildInitramfs(dir, agent, built); err != nil {
			b.Fatal(err)
		}
	}
	fi, _ := os.Stat(built.Initrd)
	b.ReportMetric(float64(fi.Size())/1024, "KiB")
}

func readDebPath(deb, dir string) (*debContents, error) {
	f, err := os.Open(deb)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readDeb(f, deb, dir)
}
