package guestinit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// A minimal rtnetlink client: link up and MTU, an IPv4 address, a default
// route. Enough to bring a VM's interface up without an `ip` binary.

var nlSeq atomic.Uint32

func nlRequest(msgType uint16, flags uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink bind: %w", err)
	}
	seq := nlSeq.Add(1)
	msg := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	msg = append(msg, body...)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], msgType)
	binary.NativeEndian.PutUint16(msg[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("netlink parse: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return errors.New("netlink: short error message")
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
				return unix.Errno(-code)
			}
			return nil
		}
	}
}

func attr(typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(l))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}

func u32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

// linkUp sets the interface up, with mtu when it is not 0.
func linkUp(index int, mtu int) error {
	body := make([]byte, unix.SizeofIfInfomsg)
	body[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(body[4:], uint32(index))
	binary.NativeEndian.PutUint32(body[8:], unix.IFF_UP)  // flags
	binary.NativeEndian.PutUint32(body[12:], unix.IFF_UP) // change mask
	if mtu > 0 {
		body = append(body, attr(unix.IFLA_MTU, u32(uint32(mtu)))...)
	}
	return nlRequest(unix.RTM_NEWLINK, 0, body)
}

// addAddr adds an IPv4 address; an address that is already there is fine.
func addAddr(index int, p netip.Prefix) error {
	body := make([]byte, unix.SizeofIfAddrmsg)
	body[0] = unix.AF_INET
	body[1] = byte(p.Bits())
	body[3] = unix.RT_SCOPE_UNIVERSE
	binary.NativeEndian.PutUint32(body[4:], uint32(index))
	a := p.Addr().As4()
	body = append(body, attr(unix.IFA_LOCAL, a[:])...)
	body = append(body, attr(unix.IFA_ADDRESS, a[:])...)
	err := nlRequest(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// setDefaultRoute points the IPv4 default route at gw through the
// interface, replacing any other.
func setDefaultRoute(index int, gw netip.Addr) error {
	body := make([]byte, unix.SizeofRtMsg)
	body[0] = unix.AF_INET
	body[4] = unix.RT_TABLE_MAIN
	body[5] = unix.RTPROT_BOOT
	body[6] = unix.RT_SCOPE_UNIVERSE
	body[7] = unix.RTN_UNICAST
	g := gw.As4()
	body = append(body, attr(unix.RTA_GATEWAY, g[:])...)
	body = append(body, attr(unix.RTA_OIF, u32(uint32(index)))...)
	return nlRequest(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, body)
}

// configureNetwork brings lo up and, when c names an address, the
// interface with its address, MTU and default route. It returns a
// one-line summary read back from the kernel.
func configureNetwork(c Config) (string, error) {
	if lo, err := net.InterfaceByName("lo"); err == nil {
		if err := linkUp(lo.Index, 0); err != nil {
			return "", fmt.Errorf("bringing lo up: %w", err)
		}
	}
	if c.IP == "" {
		return "no address configured", nil
	}
	prefix, err := netip.ParsePrefix(c.IP)
	if err != nil || !prefix.Addr().Is4() {
		return "", fmt.Errorf("banger.ip=%q is not an IPv4 address/prefix", c.IP)
	}
	ifc, err := waitInterface(c.Iface)
	if err != nil {
		return "", err
	}
	mtu := 0
	if c.MTU != "" {
		if mtu, err = strconv.Atoi(c.MTU); err != nil || mtu < 68 {
			return "", fmt.Errorf("banger.mtu=%q is not a valid MTU", c.MTU)
		}
	}
	if err := linkUp(ifc.Index, mtu); err != nil {
		return "", fmt.Errorf("bringing %s up: %w", c.Iface, err)
	}
	if err := addAddr(ifc.Index, prefix); err != nil {
		return "", fmt.Errorf("adding %s to %s: %w", prefix, c.Iface, err)
	}
	if c.GW != "" {
		gw, err := netip.ParseAddr(c.GW)
		if err != nil || !gw.Is4() {
			return "", fmt.Errorf("banger.gw=%q is not an IPv4 address", c.GW)
		}
		if err := setDefaultRoute(ifc.Index, gw); err != nil {
			return "", fmt.Errorf("adding default route via %s: %w", gw, err)
		}
	}
	ifc, _ = net.InterfaceByName(c.Iface)
	addrs, _ := ifc.Addrs()
	return fmt.Sprintf("%s %v mtu %d flags %s", c.Iface, addrs, ifc.MTU, ifc.Flags), nil
}
