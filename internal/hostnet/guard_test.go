package hostnet

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/testenv"
)

// These tests play the guest: they open a VM's TAP themselves (as the
// VMM would) and write raw Ethernet frames into it, with the VM's own
// addresses or forged ones, and watch what comes out on the host (a UDP
// socket on the bridge address, the neighbour table) and on another
// VM's TAP.

// guarded is a bridge in a namespace of its own with two shared VMs'
// TAPs, opened by the test, and their rules applied.
type guarded struct {
	n        *Net
	ns       string
	vm1, vm2 Endpoint
	tap1     *os.File
	tap2     *os.File
	brMAC    net.HardwareAddr
	gw       netip.Addr
	udp      net.PacketConn // on the bridge address, in the namespace
	seq      int
}

// guardPort is where the host's socket listens on the bridge address:
// the DNS port, the one service of the host that VMs reach (the others
// are refused by the inet table, which is not under test here).
const guardPort = 53

func newGuarded(t testing.TB) *guarded {
	testenv.RequireBinary(t, "nft", "apt-get install nftables")
	g := &guarded{ns: testenv.NetNS(t), gw: netip.MustParseAddr("10.253.0.1")}
	n, err := Open(Config{NetNS: g.ns, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	g.n = n
	if err := n.EnsureBridge(); err != nil {
		t.Fatal(err)
	}
	g.vm1 = Endpoint{VM: "one", TAP: TAPName("guard-one"), MAC: MAC("guard-one"), IP: netip.MustParseAddr("10.253.0.11"), Mode: Shared}
	g.vm2 = Endpoint{VM: "two", TAP: TAPName("guard-two"), MAC: MAC("guard-two"), IP: netip.MustParseAddr("10.253.0.12"), Mode: Shared}
	for _, ep := range []Endpoint{g.vm1, g.vm2} {
		if err := n.AddTAP(ep.TAP); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Apply([]Endpoint{g.vm1, g.vm2}); err != nil {
		t.Fatal(err)
	}
	g.tap1, g.tap2 = openTAP(t, g.ns, g.vm1.TAP), openTAP(t, g.ns, g.vm2.TAP)
	forwarding(t, g.ns, g.vm1.TAP, g.vm2.TAP)
	err = n.Do(func() error {
		br, err := netlink.LinkByName(DefaultBridge)
		if err != nil {
			return err
		}
		g.brMAC = br.Attrs().HardwareAddr
		g.udp, err = net.ListenPacket("udp4", fmt.Sprintf("%s:%d", g.gw, guardPort))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.udp.Close() })
	return g
}

// marker is a payload no other frame carries.
func (g *guarded) marker(what string) []byte {
	g.seq++
	return []byte(fmt.Sprintf("banger-test-%d-%s", g.seq, what))
}

// legitUDP is a datagram from vm1, with its own addresses, to dst.
func (g *guarded) legitUDP(dstMAC net.HardwareAddr, dst netip.Addr, data []byte) []byte {
	return frame(dstMAC, g.vm1.MAC, 0, unix.ETH_P_IP, udp4(g.vm1.IP, dst, guardPort, data))
}

// toHost writes fr into vm1's TAP, then a datagram with vm1's own
// addresses carrying a fresh marker, and reports whether a datagram
// with data reached the host's socket before that one, and from where.
func (g *guarded) toHost(t *testing.T, fr, data []byte) (bool, string) {
	t.Helper()
	end := g.marker("end")
	write(t, g.tap1, fr)
	write(t, g.tap1, g.legitUDP(g.brMAC, g.gw, end))
	g.udp.SetReadDeadline(time.Now().Add(3 * time.Second))
	got, from := false, ""
	buf := make([]byte, 2048)
	for {
		k, addr, err := g.udp.ReadFrom(buf)
		if err != nil {
			t.Fatalf("the host never got vm1's own datagram after the frame under test: %v", err)
		}
		switch {
		case bytes.Equal(buf[:k], end):
			if a := addr.(*net.UDPAddr).IP.String(); a != g.vm1.IP.String() {
				t.Fatalf("vm1's own datagram came from %s", a)
			}
			return got, from
		case bytes.Equal(buf[:k], data):
			got, from = true, addr.(*net.UDPAddr).IP.String()
		}
	}
}

// toOther writes fr into vm1's TAP, then a broadcast from vm1's own
// addresses carrying a fresh marker, and reports whether a frame
// holding mark came out of vm2's TAP before that one.
func (g *guarded) toOther(t *testing.T, fr, mark []byte) bool {
	t.Helper()
	end := g.marker("end")
	write(t, g.tap1, fr)
	write(t, g.tap1, g.legitUDP(broadcast, netip.MustParseAddr("10.253.0.255"), end))
	g.tap2.SetReadDeadline(time.Now().Add(3 * time.Second))
	got := false
	buf := make([]byte, 2048)
	for {
		k, err := g.tap2.Read(buf)
		if err != nil {
			t.Fatalf("vm2 never got vm1's own broadcast after the frame under test: %v", err)
		}
		switch {
		case bytes.Contains(buf[:k], end):
			return got
		case bytes.Contains(buf[:k], mark):
			got = true
		}
	}
}

// neighbours is the bridge's IPv4 neighbour table: address to "MAC
// STATE".
func (g *guarded) neighbours(t *testing.T) map[string]string {
	t.Helper()
	var list []struct {
		Dst    string   `json:"dst"`
		LLAddr string   `json:"lladdr"`
		State  []string `json:"state"`
	}
	ipJSON(t, &list, "-4", "-n", g.ns, "neigh", "show", "dev", DefaultBridge)
	out := map[string]string{}
	for _, e := range list {
		out[e.Dst] = e.LLAddr + " " + strings.Join(e.State, ",")
	}
	return out
}

func TestGuardDropsForgedFrames(t *testing.T) {
	g := newGuarded(t)
	vm1, vm2 := g.vm1, g.vm2
	zero := netip.IPv4Unspecified()

	t.Run("to the host", func(t *testing.T) {
		for _, c := range []struct {
			name     string
			src      net.HardwareAddr
			ip       netip.Addr
			received bool
		}{
			{"own MAC and address", vm1.MAC, vm1.IP, true},
			{"another VM's MAC", vm2.MAC, vm1.IP, false},
			{"another VM's address", vm1.MAC, vm2.IP, false},
			{"another VM's MAC and address", vm2.MAC, vm2.IP, false},
			{"an address no VM has", vm1.MAC, netip.MustParseAddr("10.253.0.50"), false},
			{"0.0.0.0 (no guest uses DHCP)", vm1.MAC, zero, false},
		} {
			t.Run(c.name, func(t *testing.T) {
				data := g.marker("host")
				fr := frame(g.brMAC, c.src, 0, unix.ETH_P_IP, udp4(c.ip, g.gw, guardPort, data))
				got, from := g.toHost(t, fr, data)
				if got != c.received || got && from != c.ip.String() {
					t.Errorf("received = %v (from %s), want %v", got, from, c.received)
				}
			})
		}
	})

	t.Run("to another VM", func(t *testing.T) {
		bcast := netip.MustParseAddr("10.253.0.255")
		for _, c := range []struct {
			name     string
			frame    func(mark []byte) []byte
			received bool
		}{
			{"own MAC and address", func(m []byte) []byte {
				return frame(broadcast, vm1.MAC, 0, unix.ETH_P_IP, udp4(vm1.IP, bcast, guardPort, m))
			}, true},
			{"another VM's MAC", func(m []byte) []byte {
				return frame(broadcast, vm2.MAC, 0, unix.ETH_P_IP, udp4(vm1.IP, bcast, guardPort, m))
			}, false},
			{"another VM's address", func(m []byte) []byte {
				return frame(broadcast, vm1.MAC, 0, unix.ETH_P_IP, udp4(vm2.IP, bcast, guardPort, m))
			}, false},
			{"0.0.0.0 (no guest uses DHCP)", func(m []byte) []byte {
				return frame(broadcast, vm1.MAC, 0, unix.ETH_P_IP, udp4(zero, bcast, guardPort, m))
			}, false},
			{"own ARP request", func(m []byte) []byte {
				return frame(broadcast, vm1.MAC, 0, unix.ETH_P_ARP, append(arp4(1, vm1.MAC, vm1.IP, zeroMAC, vm2.IP), m...))
			}, true},
			{"gratuitous ARP claiming another VM's address", func(m []byte) []byte {
				return frame(broadcast, vm1.MAC, 0, unix.ETH_P_ARP, append(arp4(1, vm1.MAC, vm2.IP, zeroMAC, vm2.IP), m...))
			}, false},
			{"ARP with another VM's sender MAC", func(m []byte) []byte {
				return frame(broadcast, vm1.MAC, 0, unix.ETH_P_ARP, append(arp4(2, vm2.MAC, vm1.IP, broadcast, vm2.IP), m...))
			}, false},
			{"ARP for another protocol", func(m []byte) []byte {
				a := arp4(1, vm1.MAC, vm1.IP, zeroMAC, vm2.IP)
				a[2] = 0x86 // ptype 0x86dd
				return frame(broadcast, vm1.MAC, 0, unix.ETH_P_ARP, append(a, m...))
			}, false},
			{"own addresses behind a VLAN tag", func(m []byte) []byte {
				return frame(broadcast, vm1.MAC, 7, unix.ETH_P_IP, udp4(vm1.IP, bcast, guardPort, m))
			}, false},
			{"IPv6", func(m []byte) []byte {
				// To ff02::1 from fe80::1, UDP; the content does not matter.
				h := append([]byte{0x60, 0, 0, 0, 0, byte(8 + len(m)), unix.IPPROTO_UDP, 64,
					0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
					0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
					0x9c, 0x40, 0x1b, 0x62, 0, byte(8 + len(m)), 0, 0}, m...)
				return frame(net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, vm1.MAC, 0, unix.ETH_P_IPV6, h)
			}, false},
			{"another protocol", func(m []byte) []byte {
				return frame(broadcast, vm1.MAC, 0, 0x88b5, m) // IEEE local experimental
			}, false},
		} {
			t.Run(c.name, func(t *testing.T) {
				mark := g.marker("vm")
				if got := g.toOther(t, c.frame(mark), mark); got != c.received {
					t.Errorf("received by the other VM = %v, want %v", got, c.received)
				}
			})
		}
	})

	t.Run("ARP to the host", func(t *testing.T) {
		stranger := netip.MustParseAddr("10.253.0.50")
		for _, fr := range [][]byte{
			// Who has the gateway? Tell vm2's address (at vm1's MAC).
			frame(broadcast, vm1.MAC, 0, unix.ETH_P_ARP, arp4(1, vm1.MAC, vm2.IP, zeroMAC, g.gw)),
			// Gratuitous: vm2's address is at vm1's MAC.
			frame(broadcast, vm1.MAC, 0, unix.ETH_P_ARP, arp4(1, vm1.MAC, vm2.IP, zeroMAC, vm2.IP)),
			frame(broadcast, vm1.MAC, 0, unix.ETH_P_ARP, arp4(2, vm1.MAC, vm2.IP, broadcast, vm2.IP)),
			// Who has the gateway? Tell an address no VM has.
			frame(broadcast, vm1.MAC, 0, unix.ETH_P_ARP, arp4(1, vm1.MAC, stranger, zeroMAC, g.gw)),
		} {
			write(t, g.tap1, fr)
		}
		// vm1 asks for the gateway as itself: the host answers that,
		// and nothing before it.
		write(t, g.tap1, frame(broadcast, vm1.MAC, 0, unix.ETH_P_ARP, arp4(1, vm1.MAC, vm1.IP, zeroMAC, g.gw)))
		g.tap1.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 2048)
		for answered := false; !answered; {
			k, err := g.tap1.Read(buf)
			if err != nil {
				t.Fatalf("the host did not answer vm1's own ARP request: %v", err)
			}
			fr := buf[:k]
			if k < 42 || binary.BigEndian.Uint16(fr[12:]) != unix.ETH_P_ARP || binary.BigEndian.Uint16(fr[20:]) != 2 {
				continue
			}
			switch tpa, _ := netip.AddrFromSlice(fr[38:42]); tpa {
			case vm1.IP:
				answered = true
			default:
				t.Errorf("the host answered an ARP request sent as %s", tpa)
			}
		}
		neigh := g.neighbours(t)
		if got, want := neigh[vm2.IP.String()], vm2.MAC.String()+" PERMANENT"; got != want {
			t.Errorf("the host's entry for vm2's address = %q, want %q", got, want)
		}
		if got, want := neigh[vm1.IP.String()], vm1.MAC.String()+" PERMANENT"; got != want {
			t.Errorf("the host's entry for vm1's address = %q, want %q", got, want)
		}
		if got, ok := neigh[stranger.String()]; ok {
			t.Errorf("a forged ARP made the host an entry for %s: %q", stranger, got)
		}
	})
}

// TestGuardFollowsVMs checks that a VM's guard entry and neighbour entry
// go when it stops (its TAP then passes nothing), that a daemon started
// afresh removes what no VM owns, and that nothing is left at the end.
func TestGuardFollowsVMs(t *testing.T) {
	g := newGuarded(t)
	setHas := func(what string) bool {
		return strings.Contains(nftList(t, g.ns, "list", "set", "bridge", TableName, AddrSet), what)
	}
	if !setHas(`"`+g.vm2.TAP+`"`) || g.neighbours(t)[g.vm2.IP.String()] == "" {
		t.Fatal("vm2 has no guard or neighbour entry")
	}

	// vm2 stops.
	if err := g.n.Apply([]Endpoint{g.vm1}); err != nil {
		t.Fatal(err)
	}
	if setHas(`"` + g.vm2.TAP + `"`) {
		t.Error("a stopped VM's guard entry is still there")
	}
	if e, ok := g.neighbours(t)[g.vm2.IP.String()]; ok {
		t.Errorf("a stopped VM's neighbour entry is still there: %s", e)
	}
	// A frame from its TAP with its own addresses reaches nothing now.
	data := g.marker("stopped")
	write(t, g.tap2, frame(g.brMAC, g.vm2.MAC, 0, unix.ETH_P_IP, udp4(g.vm2.IP, g.gw, guardPort, data)))
	if got, _ := g.toHost(t, g.legitUDP(g.brMAC, g.gw, g.marker("vm1")), data); got {
		t.Error("vm1's datagram arrived, but so did one from the stopped VM's TAP")
	}

	// What a daemon that died left: an entry of a VM that is gone, in
	// the set and in the neighbour table. Another daemon (a new Net)
	// removes both and leaves an entry outside the subnet alone.
	testenv.IP(t, "-n", g.ns, "neigh", "replace", "10.253.0.99", "lladdr", "02:00:00:00:00:99", "dev", DefaultBridge, "nud", "permanent")
	testenv.IP(t, "-n", g.ns, "neigh", "replace", "192.0.2.1", "lladdr", "02:00:00:00:00:98", "dev", DefaultBridge, "nud", "permanent")
	nftList(t, g.ns, "add", "element", "bridge", TableName, AddrSet, `{ "bg-stray" . 02:00:00:00:00:99 . 10.253.0.99 }`)
	n2, err := Open(Config{NetNS: g.ns, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	if err := n2.Apply([]Endpoint{g.vm1}); err != nil {
		t.Fatal(err)
	}
	if setHas("bg-stray") || !setHas(`"`+g.vm1.TAP+`"`) {
		t.Errorf("set after reconcile:\n%s", nftList(t, g.ns, "list", "set", "bridge", TableName, AddrSet))
	}
	neigh := g.neighbours(t)
	if _, ok := neigh["10.253.0.99"]; ok || neigh["192.0.2.1"] == "" || neigh[g.vm1.IP.String()] != g.vm1.MAC.String()+" PERMANENT" {
		t.Errorf("neighbours after reconcile: %v", neigh)
	}

	// The last VM goes: no table, no entry of the subnet.
	if err := n2.Apply(nil); err != nil {
		t.Fatal(err)
	}
	if got := nftList(t, g.ns, "list", "ruleset"); got != "" {
		t.Errorf("ruleset after the last VM:\n%s", got)
	}
	for a := range g.neighbours(t) {
		if strings.HasPrefix(a, "10.253.0.") {
			t.Errorf("neighbour entry %s left after the last VM", a)
		}
	}
}

// TestApplyRepairsTables: a table made by a banger without the guard
// gets its chain and set, and a guard whose rules are out of order (a
// drop before the accepts) is rewritten in order.
func TestApplyRepairsTables(t *testing.T) {
	testenv.RequireBinary(t, "nft", "apt-get install nftables")
	ns := testenv.NetNS(t)
	n, err := Open(Config{NetNS: ns, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.EnsureBridge(); err != nil {
		t.Fatal(err)
	}
	ep := endpoint("one", "bg-g1", "10.253.0.11", NAT)
	rs, err := buildRuleset(DefaultBridge, netip.MustParsePrefix(DefaultSubnet), []Endpoint{ep})
	if err != nil {
		t.Fatal(err)
	}
	old := `table inet banger {
	chain postrouting { type nat hook postrouting priority srcnat; ip saddr 10.253.0.11 oifname != "banger0" masquerade comment "vm one 10.253.0.11"; }
}
table bridge banger {
	chain forward { type filter hook forward priority 0; iifname "bg-*" oifname "bg-*" drop comment "isolate VMs"; }
	chain shared { }
}
`
	loadNft(t, ns, old)
	if err := n.Apply([]Endpoint{ep}); err != nil {
		t.Fatal(err)
	}
	// Chains list in the order they were made: the guard after the old ones.
	want := strings.Replace(rs.String(), guardRules+"\n", "", 1)
	want = strings.Replace(want, "\t\tiifname \"bg-*\" oifname \"bg-*\" drop comment \"isolate VMs\"\n\t}\n\n\tchain shared {\n\t}\n",
		"\t\tiifname \"bg-*\" oifname \"bg-*\" drop comment \"isolate VMs\"\n\t}\n\n\tchain shared {\n\t}\n\n"+guardRules, 1)
	if got := sortedElements(nftList(t, ns, "list", "ruleset")); got != want {
		t.Errorf("upgraded ruleset:\n%s\nwant:\n%s", got, want)
	}

	nftList(t, ns, "insert", "rule", "bridge", TableName, "prerouting", "drop", "comment", `"`+keyForged+`"`)
	if err := n.Apply([]Endpoint{ep}); err != nil {
		t.Fatal(err)
	}
	if got := sortedElements(nftList(t, ns, "list", "ruleset")); got != want {
		t.Errorf("guard not put back in order:\n%s", got)
	}
	if err := n.Teardown(); err != nil {
		t.Fatal(err)
	}
}

func loadNft(t *testing.T, ns, script string) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "*.nft")
	if err == nil {
		_, err = f.WriteString(script)
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	nftList(t, ns, "-f", f.Name())
}

// TestApplyFullSubnet applies the rules of as many VMs as a /24 holds in
// one transaction, as a daemon does when it restores its running VMs
// after the tables were flushed (a firewall reload), and removes them.
func TestApplyFullSubnet(t *testing.T) {
	testenv.RequireBinary(t, "nft", "apt-get install nftables")
	ns := testenv.NetNS(t)
	n, err := Open(Config{NetNS: ns, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.EnsureBridge(); err != nil {
		t.Fatal(err)
	}
	var eps []Endpoint
	for i := 2; i < 255; i++ {
		a := netip.AddrFrom4([4]byte{10, 253, 0, byte(i)})
		eps = append(eps, endpoint(fmt.Sprint("vm", i), fmt.Sprintf("bg-%d", i), a.String(), Shared))
	}
	if err := n.Apply(eps); err != nil {
		t.Fatal(err)
	}
	rules := nftList(t, ns, "list", "ruleset")
	if got := strings.Count(rules, "masquerade"); got != len(eps) {
		t.Errorf("%d masquerade rules, want %d", got, len(eps))
	}
	if got := strings.Count(rules, " . 10.253.0."); got != len(eps) {
		t.Errorf("%d guard elements, want %d", got, len(eps))
	}
	if err := n.Teardown(); err != nil {
		t.Fatal(err)
	}
}
