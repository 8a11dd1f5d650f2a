package kernel

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// ErrMissingModule means a driver a VM needs is neither built into the
// kernel nor among its modules.
var ErrMissingModule = errors.New("kernel lacks a driver banger needs")

// Drivers a VM needs, in the order they should load. Required ones fail
// the import when missing. Optional ones are packed when the kernel has
// them: vsock (the agent falls back to a virtio-serial port), and the
// ACPI power button with evdev (a graceful stop under QEMU, whose microvm
// machine has no keyboard for Ctrl-Alt-Del), and virtio-fs for -v mounts
// (loaded only in VMs that have such a device).
var (
	requiredDrivers = []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "ext4", "overlay"}
	optionalDrivers = []string{"vsock", "vmw_vsock_virtio_transport", "button", "evdev", "virtiofs"}
)

// Module is one kernel module file.
type Module struct {
	Name    string   // normalised: dashes become underscores
	Path    string   // relative to the modules directory
	Depends []string // direct dependencies, by name
}

func normName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// moduleIndex maps module names to files of one modules directory and
// knows which drivers are built in.
type moduleIndex struct {
	dir     string
	open    Opener
	files   map[string]string // name → path relative to dir
	builtin map[string]bool
}

func indexModules(dir string, open Opener) (*moduleIndex, error) {
	idx := &moduleIndex{dir: dir, open: open, files: map[string]string{}, builtin: map[string]bool{}}
	if err := idx.walk(""); err != nil {
		return nil, fmt.Errorf("indexing modules in %s: %w", dir, err)
	}
	// modules.builtin lists drivers compiled into the kernel, one path
	// per line (kernel/fs/ext4/ext4.ko).
	if f, err := open(filepath.Join(dir, "modules.builtin")); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			idx.builtin[normName(strings.TrimSuffix(filepath.Base(sc.Text()), ".ko"))] = true
		}
	}
	return idx, nil
}

// walk records the .ko files under rel, each directory opened with the
// index's opener (as the caller, for a user's tree). Symlinked
// directories are not followed, as filepath.WalkDir does not.
func (idx *moduleIndex) walk(rel string) error {
	d, err := idx.open(filepath.Join(idx.dir, rel))
	if err != nil {
		return err
	}
	ents, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := filepath.Join(rel, e.Name())
		switch {
		case e.IsDir():
			if err := idx.walk(p); err != nil {
				return err
			}
		case e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".ko"):
			idx.files[normName(strings.TrimSuffix(e.Name(), ".ko"))] = p
		}
	}
	return nil
}

// modinfo reads the .modinfo section of a module.
func modinfo(open Opener, path string) (map[string][]string, error) {
	raw, err := open(path)
	if err != nil {
		return nil, fmt.Errorf("reading module %s: %w", filepath.Base(path), err)
	}
	defer raw.Close()
	f, err := elf.NewFile(raw)
	if err != nil {
		return nil, fmt.Errorf("reading module %s: %w", filepath.Base(path), err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", filepath.Base(path))
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("reading module %s: %w", filepath.Base(path), err)
	}
	info := map[string][]string{}
	for _, kv := range strings.Split(string(data), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			info[k] = append(info[k], v)
		}
	}
	return info, nil
}

// resolve returns the modules to load for the wanted drivers, every
// dependency before its dependants, and the drivers that are built in.
// A required driver that is neither built in nor a module, or a missing
// dependency, is an error.
func (idx *moduleIndex) resolve(required, optional []string) ([]Module, error) {
	var order []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, neededBy string) error
	visit = func(name, neededBy string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", name)
		case 2:
			return nil
		}
		if idx.builtin[name] {
			state[name] = 2
			return nil
		}
		rel, ok := idx.files[name]
		if !ok {
			if neededBy != "" {
				return fmt.Errorf("%w: module %s needs %s, which is missing from the modules: the package is incomplete", ErrMissingModule, neededBy, name)
			}
			return fmt.Errorf("%w: %s is neither built in nor a module: use a kernel built for VMs (Debian's linux-image-cloud-amd64 works)", ErrMissingModule, name)
		}
		state[name] = 1
		info, err := modinfo(idx.open, filepath.Join(idx.dir, rel))
		if err != nil {
			return err
		}
		var deps []string
		for _, d := range info["depends"] {
			for _, dep := range strings.Split(d, ",") {
				if dep = normName(strings.TrimSpace(dep)); dep != "" {
					deps = append(deps, dep)
				}
			}
		}
		for _, dep := range deps {
			if err := visit(dep, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, Module{Name: name, Path: rel, Depends: deps})
		return nil
	}
	for _, name := range required {
		if err := visit(name, ""); err != nil {
			return nil, err
		}
	}
	for _, name := range optional {
		if _, ok := idx.files[name]; ok || idx.builtin[name] {
			if err := visit(name, ""); err != nil {
				return nil, err
			}
		}
	}
	return order, nil
}
