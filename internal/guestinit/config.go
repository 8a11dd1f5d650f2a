// Package guestinit is banger's init stage: what banger-vsock-agent does
// when it runs as PID 1, from the initramfs banger builds or as init= on
// the image's root disk. It mounts the early file systems, loads the
// kernel modules the initramfs carries, builds the VM's root as an
// overlay of the shared read-only image disk and the VM's own writable
// disk, configures the network through netlink, then hands over to the
// image's systemd or stays PID 1 to run the image's command. It never
// hangs on an error: it prints one line to the console and powers off.
package guestinit

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"banger/internal/vsockagent"
)

// Kernel command line parameters banger sets (all optional):
//
//	banger.root=/dev/vda      image disk, mounted read-only
//	banger.data=/dev/vdb      the VM's writable disk (else changes live in RAM)
//	banger.iface=eth0         interface to configure
//	banger.ip=10.0.2.15/24    address and prefix
//	banger.gw=10.0.2.2        default gateway
//	banger.mtu=1500
//	banger.dns=10.0.2.3       resolver for /etc/resolv.conf
//	banger.domain=vm          search domain, and the host name's domain in /etc/hosts
//	banger.hostname=NAME
//	banger.init=PATH|none     exec PATH after the root switch; none: stay PID 1
//	banger.hold=1             start the image's command only when the host releases it
//	banger.mount=TAG:PATH[:ro] mount virtio-fs TAG at PATH after the root switch (repeatable)
type Config struct {
	Root, Data              string
	Iface, IP, GW, DNS, MTU string
	Domain                  string
	Hostname, Init          string
	Hold                    bool
	MMIODevices             []string // virtio_mmio.device= values, for the module
	Mounts                  []Mount
}

// Mount is a virtio-fs file system the host shares (banger.mount=).
type Mount struct {
	Tag, Path string
	ReadOnly  bool
}

// ParseCmdline reads the parameters above from a kernel command line.
func ParseCmdline(cmdline string) Config {
	c := Config{Root: "/dev/vda", Iface: "eth0"}
	for _, word := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(word, "=")
		if !ok {
			continue
		}
		switch k {
		case "banger.root":
			c.Root = v
		case "banger.data":
			c.Data = v
		case "banger.iface":
			c.Iface = v
		case "banger.ip":
			c.IP = v
		case "banger.gw":
			c.GW = v
		case "banger.domain":
			c.Domain = v
		case "banger.dns":
			c.DNS = v
		case "banger.mtu":
			c.MTU = v
		case "banger.hostname":
			c.Hostname = v
		case "banger.init":
			c.Init = v
		case "banger.hold":
			c.Hold = v == "1"
		case "banger.mount":
			f := strings.Split(v, ":")
			if len(f) >= 2 {
				c.Mounts = append(c.Mounts, Mount{Tag: f[0], Path: f[1], ReadOnly: len(f) > 2 && f[2] == "ro"})
			}
		case "virtio_mmio.device":
			c.MMIODevices = append(c.MMIODevices, v)
		}
	}
	return c
}

// RunSpec is what the VM should run when the init stage stays PID 1
// (see vsockagent.RunSpec: the agent carries a new one to a restored VM).
type RunSpec = vsockagent.RunSpec

// RunSpecPath is where RunSpec lives on the writable disk (and, after the
// root switch, under /run/banger/data).
const RunSpecPath = "banger/run.json"

// writeRunSpec replaces the run spec at path whole (a new file renamed
// over the old), so a crash leaves one or the other.
func writeRunSpec(path string, r *RunSpec) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("writing the run spec: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing the run spec: %w", err)
	}
	return nil
}

func readRunSpec(path string) (*RunSpec, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r RunSpec
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", path, err)
	}
	return &r, nil
}
