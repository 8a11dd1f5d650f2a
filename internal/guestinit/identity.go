package guestinit

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"banger/internal/vsockagent"
)

// reidentify is the agent's Reidentify hook: a VM restored from a
// snapshot takes its own host name, /etc/hostname, /etc/hosts and
// resolv.conf (as the init stage writes them at boot, replacing the
// previous name's line), and its own MAC, address and default route on
// the interface.
func reidentify(id vsockagent.Identity) error {
	old, _ := os.Hostname()
	c := Config{Hostname: id.Hostname, Domain: id.Domain, Iface: id.Iface, IP: id.IP, GW: id.GW, DNS: id.DNS, MTU: id.MTU}
	if c.Iface == "" {
		c.Iface = "eth0"
	}
	if err := writeIdentity(c, "", old); err != nil {
		return err
	}
	if err := renewMachineID("/etc/machine-id"); err != nil {
		return err
	}
	if id.Run != nil {
		// The held command starts from this file once released.
		if err := writeRunSpec(dataDir+"/"+RunSpecPath, id.Run); err != nil {
			return err
		}
	}
	if id.MAC == "" && id.IP == "" {
		return nil
	}
	ifc, err := net.InterfaceByName(c.Iface)
	if err != nil {
		return fmt.Errorf("the VM has no interface %s: %w", c.Iface, err)
	}
	if id.MAC != "" {
		mac, err := net.ParseMAC(id.MAC)
		if err != nil {
			return fmt.Errorf("MAC %q: %w", id.MAC, err)
		}
		if err := setMAC(ifc.Index, mac); err != nil {
			return fmt.Errorf("setting %s's MAC to %s: %w", c.Iface, mac, err)
		}
	}
	addrs, _ := ifc.Addrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			if err := delAddr(ifc.Index, p); err != nil {
				return fmt.Errorf("removing %s from %s: %w", p, c.Iface, err)
			}
		}
	}
	if c.IP == "" {
		return nil
	}
	prefix, err := netip.ParsePrefix(c.IP)
	if err != nil || !prefix.Addr().Is4() {
		return fmt.Errorf("address %q is not an IPv4 address/prefix", c.IP)
	}
	mtu, _ := strconv.Atoi(c.MTU)
	if err := linkUp(ifc.Index, mtu); err != nil {
		return fmt.Errorf("bringing %s up: %w", c.Iface, err)
	}
	if err := addAddr(ifc.Index, prefix); err != nil {
		return fmt.Errorf("adding %s to %s: %w", prefix, c.Iface, err)
	}
	if c.GW != "" {
		gw, err := netip.ParseAddr(c.GW)
		if err != nil {
			return fmt.Errorf("gateway %q: %w", c.GW, err)
		}
		if err := setDefaultRoute(ifc.Index, gw); err != nil {
			return fmt.Errorf("adding default route via %s: %w", gw, err)
		}
	}
	return nil
}

// renewMachineID gives a restored guest a machine id of its own (its
// source's would otherwise be shared by every fork: systemd, journald and
// DHCP clients key on it). An image without the file keeps having none,
// and an empty one (systemd's "first boot" marker) stays empty. It is
// written in place, not renamed over: systemd may have bind-mounted it.
// The kernel's pool was reseeded before this runs.
func renewMachineID(path string) error {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return nil
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return err
	}
	// A version 4 UUID's bits, as systemd-id128 makes them.
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	if err := os.WriteFile(path, []byte(hex.EncodeToString(id)+"\n"), 0o444); err != nil {
		return fmt.Errorf("renewing %s: %w", path, err)
	}
	return nil
}

// setMAC changes the interface's hardware address (virtio-net takes it
// live and tells the device).
func setMAC(index int, mac net.HardwareAddr) error {
	body := make([]byte, unix.SizeofIfInfomsg)
	body[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(body[4:], uint32(index))
	body = append(body, attr(unix.IFLA_ADDRESS, mac)...)
	return nlRequest(unix.RTM_NEWLINK, 0, body)
}

// delAddr removes an IPv4 address; routes through it go with it.
func delAddr(index int, p netip.Prefix) error {
	body := make([]byte, unix.SizeofIfAddrmsg)
	body[0] = unix.AF_INET
	body[1] = byte(p.Bits())
	binary.NativeEndian.PutUint32(body[4:], uint32(index))
	a := p.Addr().As4()
	body = append(body, attr(unix.IFA_LOCAL, a[:])...)
	return nlRequest(unix.RTM_DELADDR, 0, body)
}
