package qemu

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"banger/internal/vmm"
)

func TestGuestCID(t *testing.T) {
	a, b := GuestCID("/var/lib/banger/vms/a"), GuestCID("/var/lib/banger/vms/b")
	if a == b || a < 3 || b < 3 || a >= 1<<31 || GuestCID("/var/lib/banger/vms/a") != a {
		t.Errorf("GuestCID: %d %d", a, b)
	}
}

func TestArgs(t *testing.T) {
	spec := vmm.Spec{ID: "dev", Dir: "/vm", VCPUs: 2, MemoryMiB: 512, Kernel: "/k/vmlinux", Initrd: "/k/initrd.img",
		Cmdline: "console=ttyS0 banger.root=/dev/vda",
		Drives:  []vmm.Drive{{ID: "root", Path: "/img/rootfs.ext4", ReadOnly: true}, {ID: "data", Path: "/vm/data.ext4"}},
		TAP:     "bg-dev", MAC: "02:00:0a:4d:00:02"}
	got := Args(spec, Caps{TSCkHz: 2596100})
	want := []string{
		"-name", "dev", "-M", "microvm,x-option-roms=off,rtc=on",
		"-accel", "tcg,thread=multi,tb-size=64", "-cpu", "max",
		"-m", "512", "-smp", "2",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-qmp", "unix:/vm/qmp.sock,server=on,wait=off",
		"-add-fd", "fd=3,set=1,opaque=console", "-chardev", "file,id=console,path=/dev/fdset/1,append=on", "-serial", "chardev:console",
		"-kernel", "/k/vmlinux", "-append", "console=ttyS0 banger.root=/dev/vda tsc_early_khz=2596100",
		"-initrd", "/k/initrd.img",
		"-drive", "id=root,file=/img/rootfs.ext4,format=raw,if=none,cache=none,aio=threads,readonly=on", "-device", "virtio-blk-device,drive=root",
		"-drive", "id=data,file=/vm/data.ext4,format=raw,if=none,cache=none,aio=threads", "-device", "virtio-blk-device,drive=data",
		"-netdev", "tap,id=net0,ifname=bg-dev,script=no,downscript=no", "-device", "virtio-net-device,netdev=net0,mac=02:00:0a:4d:00:02",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=/vm/agent.sock,server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=banger.agent",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("args:\n%q\nwant:\n%q", got, want)
	}

	cases := []struct {
		name    string
		spec    func(*vmm.Spec)
		caps    Caps
		has     []string
		hasNot  []string
		cmdline string
	}{
		{"kvm", nil, Caps{KVM: true, TSCkHz: 1}, []string{"kvm", "host"}, []string{"tcg,thread=multi,tb-size=64"}, "console=ttyS0 banger.root=/dev/vda"},
		{"no tap, no initrd", func(s *vmm.Spec) { s.TAP, s.Initrd = "", "" }, Caps{}, nil, []string{"-netdev", "-initrd"}, "console=ttyS0 banger.root=/dev/vda"},
		{"tsc already given", func(s *vmm.Spec) { s.Cmdline = "tsc_early_khz=5" }, Caps{TSCkHz: 9}, nil, nil, "tsc_early_khz=5"},
		{"RAM in a shared file", func(s *vmm.Spec) { s.MemoryFile = "/shm/a.ram" }, Caps{},
			[]string{"microvm,x-option-roms=off,rtc=on,memory-backend=ram", "memory-backend-file,id=ram,size=512M,mem-path=/shm/a.ram,share=on"}, nil, "console=ttyS0 banger.root=/dev/vda"},
		// A restore maps its snapshot's file copy-on-write: never written.
		{"RAM mapped private", func(s *vmm.Spec) { s.MemoryFile, s.MemoryPrivate = "/snap/memory", true }, Caps{},
			[]string{"memory-backend-file,id=ram,size=512M,mem-path=/snap/memory,share=off"}, []string{"memory-backend-file,id=ram,size=512M,mem-path=/snap/memory,share=on"}, "console=ttyS0 banger.root=/dev/vda"},
		{"vhost-vsock", nil, Caps{VhostVsock: true}, []string{fmt.Sprintf("vhost-vsock-device,guest-cid=%d", GuestCID("/vm")), "virtserialport,chardev=agent,name=banger.agent"}, nil, "console=ttyS0 banger.root=/dev/vda"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := spec
			if c.spec != nil {
				c.spec(&s)
			}
			args := Args(s, c.caps)
			joined := " " + strings.Join(args, " ") + " "
			for _, h := range c.has {
				if !strings.Contains(joined, " "+h+" ") {
					t.Errorf("missing %q in %q", h, args)
				}
			}
			for _, h := range c.hasNot {
				if strings.Contains(joined, " "+h+" ") {
					t.Errorf("unexpected %q in %q", h, args)
				}
			}
			for i, a := range args {
				if a == "-append" && args[i+1] != c.cmdline {
					t.Errorf("cmdline %q, want %q", args[i+1], c.cmdline)
				}
			}
		})
	}
}

func TestProbeIsConservativeUnderPVM(t *testing.T) {
	c := Probe()
	if c.TSCkHz <= 0 {
		t.Errorf("no TSC frequency probed")
	}
	// On hosts whose /dev/kvm is kvm_pvm, KVM must not count as usable.
	if c.KVM && fileExists("/sys/module/kvm_pvm") {
		t.Errorf("KVM reported usable under kvm_pvm")
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]string{
		"QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u16)\nCopyright (c) 2003-2022 Fabrice Bellard": "7.2.19",
		"Firecracker v1.14.2\n": "v1.14.2",
		"no version here":       "",
	} {
		if got := vmm.ParseVersion(in); got != want {
			t.Errorf("ParseVersion(%q) = %q, want %q", in, got, want)
		}
	}
}
