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
	"errors"
	"fmt"
	"io"
	"io/fs"
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

// Opener opens a file an import reads (the kernel file, the files of its
// modules directory). The daemon's opens them as the user who asked
// (system.OpenAs), so an import reads only what that user may.
type Opener func(path string) (*os.File, error)

// MaxInput bounds what an import reads from any one file, and what it
// extracts from a package in all: a kernel is tens of MiB, its modules a
// few hundred; more is a mistake or an attack on the host's disk.
const MaxInput = 2 << 30

// ErrTooLarge means an import's input is larger than MaxInput.
var ErrTooLarge = errors.New("kernel input too large")

// Options tune ImportWith.
type Options struct {
	// Modules is the kernel's modules directory (lib/modules/VERSION of
	// wherever the kernel came from); "" finds it as Import does.
	Modules string
	// Open opens the inputs; nil is os.Open. What the import extracts
	// from a package into its own work directory is read plainly.
	Open Opener
}

// Import builds the kernel at from into dir, an existing empty directory,
// packing agentBin as the initramfs's /init. On error dir may hold
// partial files; the caller removes it.
func Import(from, dir, agentBin string) (*Built, error) {
	return ImportWith(from, dir, agentBin, Options{})
}

// ImportWith is Import with options.
func ImportWith(from, dir, agentBin string, o Options) (*Built, error) {
	open := o.Open
	if open == nil {
		open = os.Open
	}
	in, err := open(from)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", from, err)
	}
	defer in.Close()
	if fi, err := in.Stat(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", from, err)
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrNotKernel, from)
	} else if fi.Size() > MaxInput {
		return nil, fmt.Errorf("%w: %s is %d MiB; a kernel or kernel package is at most %d MiB", ErrTooLarge, from, fi.Size()>>20, MaxInput>>20)
	}
	kind := detectKind(io.NewSectionReader(in, 0, 0x210))
	work, err := os.MkdirTemp(dir, ".work-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)

	source := kind.String()
	kernelIn, modsDir, version := in, "", ""
	// Modules come from the caller's tree (open) or from the package
	// extracted into work (read plainly).
	modsOpen := open
	switch kind {
	case KindDeb:
		c, err := readDeb(in, from, work)
		if err != nil {
			return nil, err
		}
		modsDir, version, modsOpen = c.modulesDir, c.version, os.Open
		if kernelIn, err = os.Open(c.kernel); err != nil {
			return nil, err
		}
		defer kernelIn.Close()
		kind = detectKind(io.NewSectionReader(kernelIn, 0, 0x210))
	case KindVmlinux, KindBzImage:
		// An installed kernel: ROOT/boot/vmlinuz-VERSION next to
		// ROOT/lib/modules/VERSION.
		if m := installedKernel.FindStringSubmatch(filepath.Base(from)); m != nil && filepath.Base(filepath.Dir(from)) == "boot" {
			version = m[1]
			mods := filepath.Join(filepath.Dir(filepath.Dir(from)), "lib", "modules", version)
			ok, err := isDir(open, mods)
			if err != nil {
				return nil, fmt.Errorf("reading the kernel's modules: %w", err)
			}
			if ok {
				modsDir = mods
			}
		}
	default:
		return nil, fmt.Errorf("%w: %s: banger imports a vmlinux, a bzImage/vmlinuz, a linux-image .deb or /boot/vmlinuz-VERSION", ErrNotKernel, from)
	}

	raw, err := readBounded(kernelIn, from)
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
		return nil, fmt.Errorf("%w: %s", ErrNotKernel, from)
	}
	if b.Version == "" {
		return nil, fmt.Errorf("%w: %s carries no \"Linux version\" banner", ErrNotKernel, from)
	}
	if o.Modules != "" {
		modsDir, modsOpen = o.Modules, open
	}

	if modsDir == "" {
		// No modules: the drivers must be built in, and the agent
		// runs as init= from the image itself.
		return b, nil
	}
	idx, err := indexModules(modsDir, modsOpen)
	if err != nil {
		return nil, err
	}
	mods, err := idx.resolve(requiredDrivers, optionalDrivers)
	if err != nil {
		return nil, err
	}
	keep := filepath.Join(dir, modulesDir, b.Version)
	for _, m := range mods {
		if err := copyFile(modsOpen, filepath.Join(modsDir, m.Path), filepath.Join(keep, m.Path)); err != nil {
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

func copyFile(open Opener, src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeFile(dst, io.LimitReader(in, MaxInput), 0o644)
}

// readBounded reads all of f, an input named name, up to MaxInput.
func readBounded(f *os.File, name string) ([]byte, error) {
	raw, err := io.ReadAll(io.LimitReader(f, MaxInput+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if len(raw) > MaxInput {
		return nil, fmt.Errorf("%w: %s is larger than %d MiB", ErrTooLarge, name, MaxInput>>20)
	}
	return raw, nil
}

// isDir reports whether path opens (with open) as a directory; one that
// is not there is not, one that may not be opened is an error.
func isDir(open Opener, path string) (bool, error) {
	f, err := open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	return err == nil && fi.IsDir(), err
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
