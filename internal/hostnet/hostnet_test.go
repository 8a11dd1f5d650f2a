package hostnet

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"banger/internal/system"
	"banger/internal/testenv"
)

func TestAllocate(t *testing.T) {
	p := netip.MustParsePrefix("10.1.2.0/29") // .2 .. .6 for VMs
	var used []netip.Addr
	for want := 2; want <= 6; want++ {
		a, err := Allocate(p, used)
		if err != nil || a != netip.AddrFrom4([4]byte{10, 1, 2, byte(want)}) {
			t.Fatalf("allocation %d = %v, %v", want, a, err)
		}
		used = append(used, a)
	}
	if _, err := Allocate(p, used); !errors.Is(err, ErrPoolExhausted) || !strings.Contains(err.Error(), "vm prune") {
		t.Fatalf("exhausted pool: %v", err)
	}
	// A released address is the next one handed out.
	a, err := Allocate(p, append(used[:1:1], used[2:]...))
	if err != nil || a != used[1] {
		t.Fatalf("after release: %v, %v", a, err)
	}
}

func TestNamesAndModes(t *testing.T) {
	a, b := TAPName("0123456789abcdef01234567"), TAPName("0123456789abcdef01234568")
	if a == b || len(a) > 15 || !strings.HasPrefix(a, TAPPrefix) || TAPName("x") != TAPName("x") {
		t.Errorf("TAP names %q %q", a, b)
	}
	m := MAC("x")
	if len(m) != 6 || m[0]&2 == 0 || m[0]&1 != 0 || MAC("x").String() != m.String() || MAC("y").String() == m.String() {
		t.Errorf("MAC %s is not a stable locally administered unicast address", m)
	}
	for in, want := range map[string]Mode{"": NAT, "nat": NAT, "shared": Shared, "none": None} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseMode("bridge"); err == nil {
		t.Error("ParseMode accepted an unknown mode")
	}
	for _, s := range []string{"10.0.0.0/8", "10.0.0.0/30", "8.8.8.0/24", "fd00::/64"} {
		if _, err := Open(Config{Subnet: netip.MustParsePrefix(s)}); err == nil {
			t.Errorf("Open accepted subnet %s", s)
		}
	}
}

func ipJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	if err := json.Unmarshal([]byte(testenv.IP(t, append([]string{"-j"}, args...)...)), v); err != nil {
		t.Fatal(err)
	}
}

func nftList(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := system.Runner{}.Run(context.Background(), "ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
	if err != nil {
		t.Fatalf("nft %v: %v", args, err)
	}
	return string(out)
}

func nsForwarding(t *testing.T, ns string) string {
	t.Helper()
	out, err := system.Runner{}.Run(context.Background(), "ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// guest stands in for a VM: a namespace behind a veth whose host end is
// named like a TAP and sits on the bridge, as a TAP would. Its eth0 has
// the MAC guestMAC gives the address, as Endpoints in tests say.
func guest(t testing.TB, host, tap, addr string) string {
	g := testenv.NetNS(t)
	testenv.IP(t, "-n", host, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "address", guestMAC(addr).String(), "netns", g)
	testenv.IP(t, "-n", host, "link", "set", tap, "master", DefaultBridge, "up")
	testenv.IP(t, "-n", g, "addr", "add", addr+"/24", "dev", "eth0")
	testenv.IP(t, "-n", g, "link", "set", "eth0", "up")
	testenv.IP(t, "-n", g, "route", "add", "default", "via", "10.253.0.1")
	return g
}

// guestMAC is the MAC of the test guest with address addr.
func guestMAC(addr string) net.HardwareAddr {
	a := netip.MustParseAddr(addr).As4()
	return net.HardwareAddr{0x02, 0, a[0], a[1], a[2], a[3]}
}

// endpoint is the Endpoint of the test guest on tap with addr.
func endpoint(vm, tap, addr string, mode Mode) Endpoint {
	return Endpoint{VM: vm, TAP: tap, MAC: guestMAC(addr), IP: netip.MustParseAddr(addr), Mode: mode}
}

// sortedElements sorts the set elements of an `nft list` output, which
// the kernel lists in hash order, as ruleset.String lists them.
func sortedElements(listing string) string {
	const open, cont = "\t\telements = { ", "\t\t\t     "
	lines := strings.Split(listing, "\n")
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], open) {
			continue
		}
		j := i
		for !strings.HasSuffix(lines[j], " }") {
			j++
		}
		var elems []string
		for k := i; k <= j; k++ {
			e := strings.TrimPrefix(strings.TrimPrefix(lines[k], open), cont)
			elems = append(elems, strings.TrimSuffix(strings.TrimSuffix(e, ","), " }"))
		}
		sort.Strings(elems)
		for k, e := range elems {
			lead, end := cont, ","
			if k == 0 {
				lead = open
			}
			if k == len(elems)-1 {
				end = " }"
			}
			lines[i+k] = lead + e + end
		}
		i = j
	}
	return strings.Join(lines, "\n")
}

// serve listens on addr inside ns and answers each connection with the
// address it came from.
func serve(t testing.TB, ns, addr string) {
	t.Helper()
	var ln net.Listener
	if err := InNetNS(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, testenv.TellRemoteIP)
}

// reach connects from ns to addr and returns the peer address the
// server saw, or the error.
func reach(ns, addr string) (string, error) {
	var c net.Conn
	err := InNetNS(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr, 700*time.Millisecond); return })
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func TestBridgeTAPsRulesAndTraffic(t *testing.T) {
	testenv.RequireBinary(t, "nft", "apt-get install nftables")
	ns := testenv.NetNS(t)
	hostFwd, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	n, err := Open(Config{NetNS: ns, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.EnsureBridge(); err != nil {
		t.Fatal(err)
	}
	if err := n.EnsureBridge(); err != nil {
		t.Fatalf("second EnsureBridge: %v", err)
	}
	var br []struct {
		Flags    []string `json:"flags"`
		AddrInfo []struct {
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	ipJSON(t, &br, "-4", "-n", ns, "addr", "show", "dev", DefaultBridge)
	if len(br) != 1 || len(br[0].AddrInfo) != 1 || br[0].AddrInfo[0].Local != "10.253.0.1" || br[0].AddrInfo[0].Prefixlen != 24 || !strings.Contains(strings.Join(br[0].Flags, ","), "UP") {
		t.Fatalf("bridge = %+v", br)
	}

	// A real TAP: persistent, tap mode, on the bridge, up.
	tap := TAPName("vm-real")
	if err := n.AddTAP(tap); err != nil {
		t.Fatal(err)
	}
	var link []struct {
		Flags    []string `json:"flags"`
		Master   string   `json:"master"`
		LinkInfo struct {
			Kind string `json:"info_kind"`
			Data struct {
				Type string `json:"type"`
			} `json:"info_data"`
		} `json:"linkinfo"`
	}
	ipJSON(t, &link, "-d", "-n", ns, "link", "show", "dev", tap)
	if len(link) != 1 || link[0].Master != DefaultBridge || link[0].LinkInfo.Kind != "tun" || link[0].LinkInfo.Data.Type != "tap" || !strings.Contains(strings.Join(link[0].Flags, ","), "UP") {
		t.Fatalf("TAP = %+v", link)
	}

	// Three guests: two shared, one NAT (isolated); an outside network.
	g1 := guest(t, ns, "bg-g1", "10.253.0.11")
	g2 := guest(t, ns, "bg-g2", "10.253.0.12")
	g3 := guest(t, ns, "bg-g3", "10.253.0.13")
	out := testenv.NetNS(t)
	testenv.IP(t, "-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", out)
	testenv.IP(t, "-n", ns, "addr", "add", "198.51.100.1/24", "dev", "up0")
	testenv.IP(t, "-n", ns, "link", "set", "up0", "up")
	testenv.IP(t, "-n", out, "addr", "add", "198.51.100.2/24", "dev", "eth0")
	testenv.IP(t, "-n", out, "link", "set", "eth0", "up")
	eps := []Endpoint{
		endpoint("one", "bg-g1", "10.253.0.11", Shared),
		endpoint("two", "bg-g2", "10.253.0.12", Shared),
		endpoint("three", "bg-g3", "10.253.0.13", NAT),
	}
	if err := n.Apply(eps); err != nil {
		t.Fatal(err)
	}
	if err := n.Apply(eps); err != nil {
		t.Fatalf("second Apply: %v", err)
	}
	// What the kernel holds reads exactly as the builder's text, which
	// TestBuildRuleset pins down.
	rs, err := buildRuleset(DefaultBridge, netip.MustParsePrefix(DefaultSubnet), eps)
	if err != nil {
		t.Fatal(err)
	}
	wantRules := rs.String()
	if got := sortedElements(nftList(t, ns, "list", "ruleset")); got != wantRules {
		t.Errorf("ruleset:\n%s\nwant:\n%s", got, wantRules)
	}
	if f := nsForwarding(t, ns); f != "1" {
		t.Errorf("ip_forward in the namespace = %s, want 1", f)
	}

	serve(t, out, "198.51.100.2:7000")
	serve(t, g2, "10.253.0.12:7001")
	serve(t, g3, "10.253.0.13:7001")
	serve(t, ns, "10.253.0.1:7002")
	for _, c := range []struct {
		from, to, saw string // saw "" means the connection must fail
	}{
		{g1, "198.51.100.2:7000", "198.51.100.1"}, // NAT: the outside sees the host
		{g3, "198.51.100.2:7000", "198.51.100.1"},
		{g1, "10.253.0.12:7001", "10.253.0.11"}, // shared to shared
		{g1, "10.253.0.13:7001", ""},            // shared to isolated
		{g3, "10.253.0.12:7001", ""},            // isolated to shared
		{g3, "10.253.0.1:7002", ""},             // no guest reaches the host's services (but DNS)
		{ns, "10.253.0.13:7001", "10.253.0.1"},  // but the host reaches every guest
	} {
		got, err := reach(c.from, c.to)
		if c.saw == "" && err == nil {
			t.Errorf("%s reached %s, want it blocked", c.from, c.to)
		}
		if c.saw != "" && (err != nil || got != c.saw) {
			t.Errorf("%s to %s: saw %q, %v; want %s", c.from, c.to, got, err, c.saw)
		}
	}

	// The third guest goes: its rule and its port go with it.
	if err := n.Apply(eps[:2]); err != nil {
		t.Fatal(err)
	}
	if got := nftList(t, ns, "list", "ruleset"); strings.Contains(got, "three") || strings.Count(got, "masquerade") != 2 {
		t.Errorf("after removing a VM:\n%s", got)
	}
	removed, err := n.RemoveOrphans(map[string]bool{"bg-g1": true, "bg-g2": true})
	if err != nil || strings.Join(removed, " ") != "bg-g3 "+tap && strings.Join(removed, " ") != tap+" bg-g3" {
		t.Errorf("RemoveOrphans = %v, %v", removed, err)
	}

	if err := n.Teardown(); err != nil {
		t.Fatal(err)
	}
	if got := nftList(t, ns, "list", "ruleset"); got != "" {
		t.Errorf("ruleset after teardown:\n%s", got)
	}
	if links := testenv.IP(t, "-n", ns, "-o", "link"); strings.Contains(links, DefaultBridge) || strings.Contains(links, TAPPrefix) {
		t.Errorf("links after teardown:\n%s", links)
	}
	if f := nsForwarding(t, ns); f != "0" {
		t.Errorf("ip_forward after teardown = %s, want 0 (banger turned it on)", f)
	}
	if now, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(now) != string(hostFwd) {
		t.Errorf("the host's own ip_forward changed: %q to %q", hostFwd, now)
	}
}

func TestSubnetCollisionIsRefused(t *testing.T) {
	ns := testenv.NetNS(t)
	testenv.IP(t, "-n", ns, "link", "add", "corp0", "type", "veth", "peer", "name", "corp1")
	testenv.IP(t, "-n", ns, "addr", "add", "10.253.128.1/16", "dev", "corp0")
	testenv.IP(t, "-n", ns, "link", "set", "corp0", "up")
	n, err := Open(Config{NetNS: ns, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	err = n.EnsureBridge()
	if !errors.Is(err, ErrSubnetInUse) || !strings.Contains(err.Error(), "corp0") || !strings.Contains(err.Error(), "--subnet") {
		t.Fatalf("EnsureBridge over a routed network: %v", err)
	}
	if links := testenv.IP(t, "-n", ns, "-o", "link"); strings.Contains(links, DefaultBridge) {
		t.Errorf("a refused subnet left a bridge:\n%s", links)
	}
	// A free subnet next to it is fine.
	n2, err := Open(Config{NetNS: ns, StateDir: t.TempDir(), Subnet: netip.MustParsePrefix("10.254.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	if err := n2.EnsureBridge(); err != nil {
		t.Fatal(err)
	}
}
