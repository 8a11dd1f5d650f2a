// Package kernel turns a Linux kernel, in whatever form a user has it,
// into what banger boots: an uncompressed ELF vmlinux and, when the
// kernel keeps its VM drivers in modules, a small initramfs holding
// exactly those modules (with their dependencies, in load order) and the
// guest agent as /init. It reads vmlinux files, bzImage/vmlinuz files
// (extracting the vmlinux in Go), Debian linux-image packages (without
// installing them) and installed kernels (/boot/vmlinuz-VERSION with
// /lib/modules/VERSION). It builds into a directory its caller gives it;
// recording and publishing is the daemon's job.
package kernel

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/klauspost/compress/gzip"
)

// File names inside a kernel directory.
const (
	VmlinuxFile = "vmlinux"
	InitrdFile  = "initrd.img"
	modulesDir  = "modules"
)

// Paths inside the initramfs that the guest init stage reads.
const (
	InitramfsMarker  = "/etc/banger/initramfs" // holds the kernel version
	InitramfsModules = "/etc/banger/modules"   // module paths under /lib/modules/VERSION, in load order
)

// Built is a kernel ready to boot, inside its directory.
type Built struct {
	Version   string
	Vmlinux   string   // absolute path of the ELF kernel
	Initrd    string   // absolute path, "" when the kernel needs no modules
	Modules   []string // module names packed, in load order
	AgentHash string   // sha256 of the agent packed as /init, "" without initrd
	Source    string   // what was imported: vmlinux, bzImage, deb
}

var installedKernel = regexp.MustCompile(`^vmlinu[xz]-(.+)$`)

// Import builds the kernel at from into dir, an existing empty directory,
// packing agentBin as the initramfs's /init. On error dir may hold
// partial files; the caller removes it.
func Import(from, dir, agentBin string) (*Built, error) {
	return ImportWithModules(from, "", dir, agentBin)
}

// ImportWithModules is Import with the kernel's modules directory given
// (lib/modules/VERSION of wherever the kernel came from); "" finds it as
// Import does.
func ImportWithModules(from, modules, dir, agentBin string) (*Built, error) {
	kind, err := DetectKind(from)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", from, err)
	}
	work, err := os.MkdirTemp(dir, ".work-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)

	source := kind.String()
	kernelFile, modsDir, version := from, "", ""
	switch kind {
	case KindDeb:
		c, err := readDeb(from, work)
		if err != nil {
			return nil, err
		}
		kernelFile, modsDir, version = c.kernel, c.modulesDir, c.version
		if kind, err = DetectKind(kernelFile); err != nil {
			return nil, err
		}
	case KindVmlinux, KindBzImage:
		// An installed kernel: ROOT/boot/vmlinuz-VERSION next to
		// ROOT/lib/modules/VERSION.
		if m := installedKernel.FindStringSubmatch(filepath.Base(from)); m != nil && filepath.Base(filepath.Dir(from)) == "boot" {
			version = m[1]
			mods := filepath.Join(filepath.Dir(filepath.Dir(from)), "lib", "modules", version)
			if fi, err := os.Stat(mods); err == nil && fi.IsDir() {
				modsDir = mods
			}
		}
	default:
		return nil, fmt.Errorf("%w: %s: banger imports a vmlinux, a bzImage/vmlinuz, a linux-image .deb or /boot/vmlinuz-VERSION", ErrNotKernel, from)
	}

	raw, err := os.ReadFile(kernelFile)
	if err != nil {
		return nil, err
	}
	b := &Built{Source: source, Vmlinux: filepath.Join(dir, VmlinuxFile)}
	if v := VersionOf(raw); v != "" {
		version = v
	}
	b.Version = version
	switch kind {
	case KindVmlinux:
		if err := os.WriteFile(b.Vmlinux, raw, 0o644); err != nil {
			return nil, err
		}
	case KindBzImage:
		f, err := os.Create(b.Vmlinux)
		if err != nil {
			return nil, err
		}
		err = ExtractVmlinux(raw, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%w: %s", ErrNotKernel, kernelFile)
	}
	if b.Version == "" {
		return nil, fmt.Errorf("%w: %s carries no \"Linux version\" banner", ErrNotKernel, from)
	}
	if modules != "" {
		modsDir = modules
	}

	if modsDir == "" {
		// No modules: the drivers must be built in, and the agent
		// runs as init= from the image itself.
		return b, nil
	}
	idx, err := indexModules(modsDir)
	if err != nil {
		return nil, err
	}
	mods, err := idx.resolve(requiredDrivers, optionalDrivers)
	if err != nil {
		return nil, err
	}
	keep := filepath.Join(dir, modulesDir, b.Version)
	for _, m := range mods {
		if err := copyFile(filepath.Join(modsDir, m.Path), filepath.Join(keep, m.Path)); err != nil {
			return nil, fmt.Errorf("copying module %s: %w", m.Name, err)
		}
		b.Modules = append(b.Modules, m.Name)
	}
	if err := writeModuleList(dir, b.Version, mods); err != nil {
		return nil, err
	}
	if err := BuildInitramfs(dir, agentBin, b); err != nil {
		return nil, err
	}
	return b, nil
}

// moduleList is the load order file kept next to the modules so an
// initramfs can be rebuilt without the original kernel.
func writeModuleList(dir, version string, mods []Module) error {
	var buf bytes.Buffer
	for _, m := range mods {
		fmt.Fprintf(&buf, "%s\n", m.Path)
	}
	return os.WriteFile(filepath.Join(dir, modulesDir, version, "order"), buf.Bytes(), 0o644)
}

// HashFile returns the sha256 of a file as hex.
func HashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// BuildInitramfs (re)writes dir/initrd.img from the modules kept in dir
// and agentBin, and sets b.Initrd and b.AgentHash. The file is replaced
// atomically, so a VM booting meanwhile sees the old or the new one.
func BuildInitramfs(dir, agentBin string, b *Built) error {
	agentHash, err := HashFile(agentBin)
	if err != nil {
		return fmt.Errorf("reading guest agent %s: %w", agentBin, err)
	}
	order, err := os.ReadFile(filepath.Join(dir, modulesDir, b.Version, "order"))
	if err != nil {
		return fmt.Errorf("reading module list: %w", err)
	}
	mods := strings.Fields(string(order))
	tmp, err := os.CreateTemp(dir, ".initrd-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	zw, _ := gzip.NewWriterLevel(tmp, gzip.BestCompression)
	cw := &cpioWriter{w: zw}
	for _, d := range []string{"dev", "proc", "sys", "run", "newroot", "etc", "etc/banger", "lib", "lib/modules"} {
		cw.Dir(d, 0o755)
	}
	// The kernel opens /dev/console for init before anything is mounted.
	cw.CharDev("dev/console", 0o600, 5, 1)
	dirs := map[string]bool{}
	var modDirs []string
	for _, m := range mods {
		for d := filepath.Dir(m); d != "."; d = filepath.Dir(d) {
			if !dirs[d] {
				dirs[d] = true
				modDirs = append(modDirs, d)
			}
		}
	}
	sort.Slice(modDirs, func(i, j int) bool {
		return strings.Count(modDirs[i], "/") < strings.Count(modDirs[j], "/") || (strings.Count(modDirs[i], "/") == strings.Count(modDirs[j], "/") && modDirs[i] < modDirs[j])
	})
	base := "lib/modules/" + b.Version
	cw.Dir(base, 0o755)
	for _, d := range modDirs {
		cw.Dir(base+"/"+d, 0o755)
	}
	for _, m := range mods {
		if err := addFile(cw, base+"/"+m, filepath.Join(dir, modulesDir, b.Version, m), 0o644); err != nil {
			return err
		}
	}
	cw.File(InitramfsModules, 0o644, int64(len(order)), bytes.NewReader(order))
	cw.File(InitramfsMarker, 0o644, int64(len(b.Version)+1), strings.NewReader(b.Version+"\n"))
	if err := addFile(cw, "init", agentBin, 0o755); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("writing initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("writing initramfs: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing initramfs: %w", err)
	}
	// Readable by a VMM running as another user (the jailer).
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	b.Initrd = filepath.Join(dir, InitrdFile)
	if err := os.Rename(tmp.Name(), b.Initrd); err != nil {
		return fmt.Errorf("writing initramfs: %w", err)
	}
	b.AgentHash = agentHash
	return nil
}

func addFile(cw *cpioWriter, name, src string, perm uint32) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	cw.File(name, perm, fi.Size(), f)
	return nil
}

func copyFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeFile(dst, in, 0o644)
}

// WriteMinimalInitramfs writes a gzip'd initramfs holding only initBin as
// /init and /dev/console: the smallest thing a kernel boots into. It is
// the baseline of boot measurements and a probe of whether a VMM really
// runs guests.
func WriteMinimalInitramfs(initBin, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	zw := gzip.NewWriter(f)
	cw := &cpioWriter{w: zw}
	cw.Dir("dev", 0o755)
	cw.CharDev("dev/console", 0o600, 5, 1)
	if err := addFile(cw, "init", initBin, 0o755); err != nil {
		f.Close()
		return err
	}
	err = cw.Close()
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
