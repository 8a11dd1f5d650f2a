package hostnet

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/testenv"
)

// These tests stand VMs in with namespaces behind veths on the bridge
// (guest) and put an "outside" network behind another veth: a web
// server on 198.51.100.2 and .3, a private-range host 10.99.0.5 and a
// metadata server 169.254.169.254 (routed there by the host). The host
// itself listens on the bridge address and on its outside address.

// egressSite is a bridge with three guests (one and two shared, three
// NAT) and the outside network.
type egressSite struct {
	n             *Net
	ns, out       string
	g1, g2, g3    string
	e1, e2, e3    Endpoint
	outsideRoutes []string
}

func newEgressSite(t testing.TB) *egressSite {
	testenv.RequireBinary(t, "nft", "apt-get install nftables")
	s := &egressSite{ns: testenv.NetNS(t)}
	n, err := Open(Config{NetNS: s.ns, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	s.n = n
	if err := n.EnsureBridge(); err != nil {
		t.Fatal(err)
	}
	s.g1, s.g2, s.g3 = guest(t, s.ns, "bg-g1", "10.253.0.11"), guest(t, s.ns, "bg-g2", "10.253.0.12"), guest(t, s.ns, "bg-g3", "10.253.0.13")
	s.e1, s.e2, s.e3 = endpoint("one", "bg-g1", "10.253.0.11", Shared), endpoint("two", "bg-g2", "10.253.0.12", Shared), endpoint("three", "bg-g3", "10.253.0.13", NAT)
	s.out = testenv.NetNS(t)
	testenv.IP(t, "-n", s.ns, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", s.out)
	testenv.IP(t, "-n", s.ns, "addr", "add", "198.51.100.1/24", "dev", "up0")
	testenv.IP(t, "-n", s.ns, "link", "set", "up0", "up")
	for _, a := range []string{"198.51.100.2/24", "198.51.100.3/24", "10.99.0.5/32", "169.254.169.254/32"} {
		testenv.IP(t, "-n", s.out, "addr", "add", a, "dev", "eth0")
	}
	testenv.IP(t, "-n", s.out, "link", "set", "eth0", "up")
	for _, dst := range []string{"10.99.0.5", "169.254.169.254"} {
		testenv.IP(t, "-n", s.ns, "route", "add", dst, "via", "198.51.100.2")
	}
	serve(t, s.out, "0.0.0.0:7000")
	serveEcho(t, s.out, "0.0.0.0:7001")
	serve(t, s.ns, "10.253.0.1:7002")   // a host service on the bridge address
	serve(t, s.ns, "198.51.100.1:7003") // and on another of the host's addresses
	serve(t, s.ns, "10.253.0.1:53")     // where banger's DNS answers (over TCP here)
	for _, g := range []string{s.g1, s.g2, s.g3} {
		serve(t, g, "0.0.0.0:7001")
	}
	return s
}

// brNetfilter turns br_netfilter's passing of bridged IPv4 to the inet
// hooks on or off in the namespace (per namespace since Linux 5.3; on
// by default wherever the module is loaded, as Docker loads it).
func brNetfilter(t *testing.T, ns string, on bool) {
	t.Helper()
	p := "/proc/sys/net/bridge/bridge-nf-call-iptables"
	if _, err := os.Stat(p); err != nil {
		if on {
			testenv.Skip(t, "br_netfilter is not loaded: modprobe br_netfilter")
		}
		return
	}
	v := map[bool]string{true: "1", false: "0"}[on]
	err := InNetNS(ns, func() error { return os.WriteFile(p, []byte(v), 0o644) })
	if err != nil {
		t.Fatal(err)
	}
}

// serveEcho listens on addr inside ns and echoes.
func serveEcho(t testing.TB, ns, addr string) {
	t.Helper()
	var ln net.Listener
	if err := InNetNS(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, testenv.Echo)
}

type path struct {
	from, to, saw string // saw "" means the connection must fail
	why           string
}

func checkPaths(t *testing.T, paths []path) {
	t.Helper()
	for _, c := range paths {
		got, err := reach(c.from, c.to)
		if c.saw == "" && err == nil {
			t.Errorf("%s: reached %s, want it refused", c.why, c.to)
		}
		if c.saw != "" && (err != nil || got != c.saw) {
			t.Errorf("%s: %s saw %q, %v; want %s", c.why, c.to, got, err, c.saw)
		}
	}
}

// TestEgressDefault: with the default policy a VM reaches the outside
// but not the host (but for DNS), a metadata server, a private-range
// host or another VM (but a shared one, from a shared one), with
// br_netfilter on and off.
func TestEgressDefault(t *testing.T) {
	s := newEgressSite(t)
	if err := s.n.Apply([]Endpoint{s.e1, s.e2, s.e3}); err != nil {
		t.Fatal(err)
	}
	for _, brnf := range []bool{true, false} {
		t.Run(fmt.Sprintf("br_netfilter=%v", brnf), func(t *testing.T) {
			brNetfilter(t, s.ns, brnf)
			checkPaths(t, []path{
				{s.g3, "198.51.100.2:7000", "198.51.100.1", "the outside, through NAT"},
				{s.g3, "10.253.0.1:53", "10.253.0.13", "banger's DNS on the bridge address"},
				{s.g3, "10.253.0.1:7002", "", "a host service on the bridge address"},
				{s.g3, "198.51.100.1:7003", "", "a host service on another address"},
				{s.g3, "169.254.169.254:7000", "", "a metadata server"},
				{s.g3, "10.99.0.5:7000", "", "a private-range host"},
				{s.g1, "10.253.0.12:7001", "10.253.0.11", "shared to shared"},
				{s.g1, "10.253.0.13:7001", "", "shared to isolated"},
				{s.g3, "10.253.0.12:7001", "", "isolated to shared"},
				{s.ns, "10.253.0.13:7001", "10.253.0.1", "the host to a VM"},
			})
			// Two VMs that route each other's address through the host
			// (to the bridge's MAC, which the bridge passes up rather
			// than between their ports) get no further.
			testenv.IP(t, "-n", s.g3, "route", "add", "10.253.0.12/32", "via", "10.253.0.1")
			defer testenv.IP(t, "-n", s.g3, "route", "del", "10.253.0.12/32")
			testenv.IP(t, "-n", s.g2, "route", "add", "10.253.0.13/32", "via", "10.253.0.1")
			defer testenv.IP(t, "-n", s.g2, "route", "del", "10.253.0.13/32")
			checkPaths(t, []path{{s.g3, "10.253.0.12:7001", "", "another VM, routed through the host"}})
		})
	}
}

// TestEgressPolicies: allow-lists, learned addresses, deny-out, and a
// change that cuts an open connection.
func TestEgressPolicies(t *testing.T) {
	s := newEgressSite(t)
	pfx := netip.MustParsePrefix
	closed := s.e3
	closed.Egress = Egress{Closed: true, Allow: []netip.Prefix{pfx("10.99.0.5/32"), pfx("10.253.0.0/24")}}
	apply := func(eps ...Endpoint) {
		t.Helper()
		if err := s.n.Apply(eps); err != nil {
			t.Fatal(err)
		}
	}
	apply(s.e1, closed)
	serve(t, s.out, "198.51.100.2:53") // another resolver, over TCP
	serve(t, s.out, "198.51.100.2:853")
	checkPaths(t, []path{
		{s.g3, "10.99.0.5:7000", "198.51.100.1", "an allowed private address"},
		{s.g3, "198.51.100.2:7000", "", "an address no allowed name resolved to"},
		{s.g3, "169.254.169.254:7000", "", "a metadata server"},
		{s.g3, "10.253.0.1:7002", "", "a host service, although its network is allowed"},
		{s.g3, "10.253.0.11:7001", "", "another VM, although its network is allowed"},
		{s.g3, "10.253.0.1:53", "10.253.0.13", "banger's DNS"},
		{s.g1, "198.51.100.2:53", "198.51.100.1", "another resolver, from a VM without an allow-list"},
	})

	// What banger's DNS resolved for it: reachable, resolvers not even
	// then.
	if err := s.n.Learn(closed.IP, "three", "web.test", []netip.Addr{netip.MustParseAddr("198.51.100.2")}, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	checkPaths(t, []path{
		{s.g3, "198.51.100.2:7000", "198.51.100.1", "a learned address"},
		{s.g3, "198.51.100.3:7000", "", "an address not learned"},
		{s.g3, "198.51.100.2:53", "", "another resolver at a learned address"},
		{s.g3, "198.51.100.2:853", "", "another resolver over TLS at a learned address"},
	})
	learned := nftList(t, s.ns, "list", "set", "inet", TableName, LearnedSet)
	if !strings.Contains(learned, `10.253.0.13 . 198.51.100.2 timeout 30s expires`) || !strings.Contains(learned, `comment "vm three: web.test"`) {
		t.Errorf("learned set:\n%s", learned)
	}

	// An open connection to it survives a change that keeps its name
	// and is reset by one that drops it, at its next packet.
	conn := dialFrom(t, s.g3, "198.51.100.2:7001")
	roundTrip(t, conn, nil)
	closed.Egress.KeepLearned = func(n string) bool { return n == "web.test" }
	closed.Egress.Allow = closed.Egress.Allow[:1]
	apply(s.e1, closed)
	roundTrip(t, conn, nil)
	closed.Egress.KeepLearned = func(n string) bool { return n == "other.test" }
	apply(s.e1, closed)
	roundTrip(t, conn, syscall.ECONNRESET)
	if learned := nftList(t, s.ns, "list", "set", "inet", TableName, LearnedSet); strings.Contains(learned, "198.51.100.2") {
		t.Errorf("an address of a name no longer allowed is still there:\n%s", learned)
	}

	// deny-out on top of the default, on a running VM: its open
	// connection dies too.
	conn = dialFrom(t, s.g1, "198.51.100.3:7001")
	roundTrip(t, conn, nil)
	e1 := s.e1
	e1.Egress.Deny = []netip.Prefix{pfx("198.51.100.3/32")}
	apply(e1, closed)
	roundTrip(t, conn, syscall.ECONNRESET)
	checkPaths(t, []path{
		{s.g1, "198.51.100.3:7000", "", "a denied address"},
		{s.g1, "198.51.100.2:7000", "198.51.100.1", "the rest of the outside"},
	})
	// Back to the default: open again.
	apply(s.e1, s.e3)
	checkPaths(t, []path{{s.g1, "198.51.100.3:7000", "198.51.100.1", "the outside again"}, {s.g3, "198.51.100.2:7000", "198.51.100.1", "the outside again"}})
	if got := nftList(t, s.ns, "list", "set", "inet", TableName, LearnedSet); strings.Contains(got, "elements") {
		t.Errorf("learned addresses of a VM whose egress is no longer closed:\n%s", got)
	}
	if err := s.n.Teardown(); err != nil {
		t.Fatal(err)
	}
	if got := nftList(t, s.ns, "list", "ruleset"); got != "" {
		t.Errorf("ruleset after teardown:\n%s", got)
	}
}

func dialFrom(t *testing.T, ns, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	if err := InNetNS(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr, time.Second); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes a line to an echo server on c and reads it back: nil
// wants it back, an errno that error.
func roundTrip(t *testing.T, c net.Conn, want error) {
	t.Helper()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	_, err := fmt.Fprintln(c, "ping")
	if err == nil {
		var line string
		line, err = bufio.NewReader(c).ReadString('\n')
		if err == nil && line != "ping\n" {
			err = fmt.Errorf("echoed %q", line)
		}
	}
	if want == nil && err != nil {
		t.Errorf("round trip: %v", err)
	}
	if want != nil && !errors.Is(err, want) {
		t.Errorf("round trip: %v, want %v", err, want)
	}
}
