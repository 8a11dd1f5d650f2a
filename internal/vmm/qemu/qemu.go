// Package qemu runs VMs with QEMU's microvm machine: the command line as
// a pure function of the spec and the host's probed capabilities, QMP
// for control, KVM when the host really runs guests with it and software
// emulation (TCG) otherwise, the guest agent over a virtio-serial port.
package qemu

import (
	"banger/internal/vsockagent"
	"fmt"
	"hash/fnv"
	"os"
	"strconv"
	"strings"

	"banger/internal/vmm"
)

// File names in a VM directory.
const (
	QMPSocket   = "qmp.sock"
	AgentSocket = "agent.sock"
	ConsoleLog  = vmm.ConsoleLog
	VMMLog      = "qemu.log"
	// AgentPortName is the virtio-serial port the guest agent opens
	// (/dev/virtio-ports/banger.agent).
	AgentPortName = vsockagent.SerialPortName
)

// Caps is what the host can do for QEMU, probed once.
type Caps struct {
	// KVM: /dev/kvm runs ordinary guests. False under kvm_pvm, which
	// only runs kernels built for PVM (see notes/vms.md).
	KVM bool
	// TSCkHz is the host TSC frequency; guests under emulation hang
	// calibrating their TSC without it.
	TSCkHz int
	// VhostVsock: /dev/vhost-vsock exists, so the agent channel can be
	// vsock (virtio-serial stays as the fallback).
	VhostVsock bool
}

// Probe reads the host's capabilities.
func Probe() Caps {
	c := Caps{TSCkHz: tscKHz()}
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		c.KVM = !fileExists("/sys/module/kvm_pvm")
	}
	if f, err := os.OpenFile("/dev/vhost-vsock", os.O_RDWR, 0); err == nil {
		f.Close()
		c.VhostVsock = true
	}
	return c
}

// GuestCID is the vsock context id of the VM whose directory is dir
// under vhost-vsock. Unlike Firecracker's per-VM vsock sockets,
// vhost-vsock ids are host-wide (across banger instances too), so each
// VM gets its own: a hash of its directory, above the reserved 0-2. QEMU refuses a taken one, so a collision fails the
// start clearly instead of crossing wires.
func GuestCID(dir string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(dir))
	return 3 + h.Sum32()%(1<<31-4)
}

func tscKHz() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "cpu MHz") {
			if _, v, ok := strings.Cut(l, ":"); ok {
				mhz, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				return int(mhz * 1000)
			}
		}
	}
	return 0
}

// TCGCodeCacheMiB bounds the code cache of QEMU's software emulation
// (TCG's tb-size). QEMU 7.2 defaults to 1 GiB (an eighth of the host's
// RAM at most), filled as the guest runs code it has not run before and
// flushed only when full: a guest busy compiling could make its QEMU 1
// GiB larger than its RAM, past its cgroup's memory limit (see the VM
// service's overhead), and the OOM killer would end a VM that did
// nothing wrong. A boot and a few hundred commands filled 70 MiB of the
// default cache here (QEMU's own memory: 98 MiB); with 64 MiB the cache
// is flushed once and QEMU stays at 89 MiB, and a boot takes as long
// (3.2 s either way): beyond the bound a guest pays in re-translation,
// not in the host's memory.
const TCGCodeCacheMiB = 64

// consoleFD is the descriptor QEMU inherits the console pipe on (its
// first extra file).
const consoleFD = 3

// Args is the QEMU command line for spec on a host with caps. dir is the
// VM directory (spec.Dir). The serial console goes to the pipe QEMU
// inherits on descriptor 3 (see vmm.Spec.Console).
func Args(spec vmm.Spec, caps Caps) []string {
	dir := spec.Dir
	cmdline := spec.Cmdline
	machine := "microvm,x-option-roms=off,rtc=on"
	if spec.MemoryFile != "" {
		machine += ",memory-backend=ram"
	}
	args := []string{
		"-name", spec.ID,
		"-M", machine,
	}
	if spec.MemoryFile != "" {
		// Guest RAM in a shared file: a snapshot is that file's copy plus
		// a small device-state stream (migration capability
		// x-ignore-shared). A restore maps its snapshot's file private
		// (copy-on-write, see snapshot.go).
		share := "on"
		if spec.MemoryPrivate {
			share = "off"
		}
		args = append(args, "-object", fmt.Sprintf("memory-backend-file,id=ram,size=%dM,mem-path=%s,share=%s", spec.MemoryMiB, spec.MemoryFile, share))
	}
	if caps.KVM {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg,thread=multi,tb-size="+strconv.Itoa(TCGCodeCacheMiB), "-cpu", "max")
		if caps.TSCkHz > 0 && !strings.Contains(cmdline, "tsc_early_khz=") {
			cmdline = strings.TrimSpace(cmdline + " tsc_early_khz=" + strconv.Itoa(caps.TSCkHz))
		}
	}
	args = append(args,
		"-m", strconv.Itoa(spec.MemoryMiB), "-smp", strconv.Itoa(spec.VCPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-qmp", "unix:"+dir+"/"+QMPSocket+",server=on,wait=off",
		// The console pipe, as an fd set QEMU opens by name. QEMU 7.2
		// refuses to open an fd set with O_TRUNC: append=on leaves it out.
		"-add-fd", fmt.Sprintf("fd=%d,set=1,opaque=console", consoleFD),
		"-chardev", "file,id=console,path=/dev/fdset/1,append=on",
		"-serial", "chardev:console",
		"-kernel", spec.Kernel,
		"-append", cmdline,
	)
	if spec.Initrd != "" {
		args = append(args, "-initrd", spec.Initrd)
	}
	for _, d := range spec.Drives {
		drive := "id=" + d.ID + ",file=" + d.Path + ",format=raw,if=none,cache=none,aio=threads"
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		args = append(args, "-drive", drive, "-device", "virtio-blk-device,drive="+d.ID)
	}
	if spec.TAP != "" {
		nic := "virtio-net-device,netdev=net0"
		if spec.MAC != "" {
			nic += ",mac=" + spec.MAC
		}
		args = append(args, "-netdev", "tap,id=net0,ifname="+spec.TAP+",script=no,downscript=no", "-device", nic)
	}
	if len(spec.FS) > 0 {
		// virtiofsd's libvhost-user speaks only modern (virtio 1.0)
		// devices; microvm's virtio-mmio transports default to legacy.
		// Only VMs with shared directories switch: the others' device
		// state stays what their snapshots hold.
		args = append(args, "-global", "virtio-mmio.force-legacy=false")
	}
	for i, fs := range spec.FS {
		id := "fs" + strconv.Itoa(i)
		args = append(args, "-chardev", "socket,id="+id+",path="+fs.Socket,
			"-device", "vhost-user-fs-device,chardev="+id+",tag="+fs.Tag+",queue-size=1024")
	}
	if caps.VhostVsock {
		args = append(args, "-device", fmt.Sprintf("vhost-vsock-device,guest-cid=%d", GuestCID(dir)))
	}
	args = append(args,
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path="+dir+"/"+AgentSocket+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name="+AgentPortName,
	)
	return args
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
