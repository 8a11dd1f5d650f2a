package hostnet

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/system"
)

// Test helpers that play a VM on its TAP: attach to the TAP as a VMM
// does, and build the raw frames a guest (or a forger) sends.

// openTAP attaches to the persistent TAP name in ns, as a VMM does, and
// returns its file: each write is one frame into the bridge, each read
// one frame out of it.
func openTAP(t testing.TB, ns, name string) *os.File {
	t.Helper()
	var f *os.File
	err := InNetNS(ns, func() error {
		// The TAP is looked up in the namespace the file is opened in.
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s: %w", name, err)
		}
		f = os.NewFile(uintptr(fd), name)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// forwarding waits until the bridge forwards on each of taps: a TAP
// has carrier once opened, but the kernel tells the bridge later (link
// watch events may wait up to a second), and until then the port drops
// every frame.
func forwarding(t testing.TB, ns string, taps ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, tap := range taps {
		for {
			out, err := system.Runner{}.Run(context.Background(), "ip", "netns", "exec", ns, "bridge", "-j", "link", "show", "dev", tap)
			if err != nil {
				t.Fatalf("bridge link show %s: %v", tap, err)
			}
			if strings.Contains(string(out), `"state":"forwarding"`) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the bridge does not forward on %s: %s", tap, out)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// frame is an Ethernet frame: dst, src, EtherType (and a VLAN tag
// before it when vlan is not 0), then payload, padded to 60 bytes.
func frame(dst, src net.HardwareAddr, vlan, etherType uint16, payload []byte) []byte {
	b := append(append([]byte{}, dst...), src...)
	if vlan != 0 {
		b = binary.BigEndian.AppendUint16(b, unix.ETH_P_8021Q)
		b = binary.BigEndian.AppendUint16(b, vlan)
	}
	b = binary.BigEndian.AppendUint16(b, etherType)
	b = append(b, payload...)
	for len(b) < 60 {
		b = append(b, 0)
	}
	return b
}

// udp4 is an IPv4 packet (header checksum set) carrying a UDP datagram
// (no checksum, which IPv4 allows).
func udp4(src, dst netip.Addr, port uint16, data []byte) []byte {
	h := make([]byte, 20, 28+len(data))
	h[0], h[8], h[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(h[2:], uint16(28+len(data)))
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(h[10:], ^uint16(sum))
	h = binary.BigEndian.AppendUint16(h, 40000)
	h = binary.BigEndian.AppendUint16(h, port)
	h = binary.BigEndian.AppendUint16(h, uint16(8+len(data)))
	h = binary.BigEndian.AppendUint16(h, 0)
	return append(h, data...)
}

// arp4 is an Ethernet/IPv4 ARP packet (op 1 request, 2 reply).
func arp4(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	b := []byte{0, 1, 8, 0, 6, 4}
	b = binary.BigEndian.AppendUint16(b, op)
	s, t := spa.As4(), tpa.As4()
	b = append(append(b, sha...), s[:]...)
	return append(append(b, tha...), t[:]...)
}

var (
	broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	zeroMAC   = net.HardwareAddr{0, 0, 0, 0, 0, 0}
)

func write(t *testing.T, f *os.File, fr []byte) {
	t.Helper()
	if _, err := f.Write(fr); err != nil {
		t.Fatalf("writing a frame to %s: %v", f.Name(), err)
	}
}
