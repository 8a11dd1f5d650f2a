package vmnet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/hostnet"
	"banger/internal/system"
	"banger/internal/testenv"
)

// These tests run the network runtime in a namespace with no VM: each
// guest is a namespace of its own whose eth0 is a TAP the test opened,
// relayed frame by frame to the VM's TAP on the bridge, as a VMM
// relays its guest's. Beyond the host is an "outside" namespace: web
// servers on 198.51.100.2 (web.test) and .3 (other.test), a
// private-range host 10.99.0.5 and a metadata server 169.254.169.254.
// The upstream resolver counts the questions it gets.

// upstream is the resolver banger's DNS forwards to.
type upstream struct {
	addr string
	mu   sync.Mutex
	seen map[string]int
}

var upstreamZone = map[string]struct {
	addr string
	ttl  uint32
}{
	"web.test.":   {"198.51.100.2", 5}, // under LearnFloor
	"other.test.": {"198.51.100.3", 3600},
	"meta.test.":  {"169.254.169.254", 60}, // a public name for a metadata server
}

func (u *upstream) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	u.mu.Lock()
	u.seen[strings.ToLower(q.Name)]++
	u.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	if z, ok := upstreamZone[strings.ToLower(q.Name)]; !ok {
		m.Rcode = dns.RcodeNameError
	} else if q.Qtype == dns.TypeA {
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: z.ttl},
			A: net.ParseIP(z.addr)})
	}
	w.WriteMsg(m)
}

func (u *upstream) count(name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[name]
}

// startUpstream serves u on loopback, where bangerd reaches the host's
// resolvers from (its own namespace, not the VM network's).
func startUpstream(t testing.TB) *upstream {
	u := &upstream{seen: map[string]int{}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: u}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	u.addr = pc.LocalAddr().String()
	return u
}

type site struct {
	r       *Runtime
	ns, out string
	up      *upstream
}

func newSite(t testing.TB) *site {
	testenv.RequireBinary(t, "nft", "apt-get install nftables")
	s := &site{ns: testenv.NetNS(t), out: testenv.NetNS(t), up: startUpstream(t)}
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
	listen(t, s.out, "0.0.0.0:7000", testenv.TellRemoteIP)
	listen(t, s.out, "0.0.0.0:7001", testenv.Echo)
	s.r = New(Config{Net: hostnet.Config{NetNS: s.ns, StateDir: t.TempDir()}, DNSUpstreams: []string{s.up.addr}})
	t.Cleanup(s.r.Close)
	return s
}

// vm attaches a VM with policy p and stands its guest in: it returns
// the guest's namespace.
func (s *site) vm(t testing.TB, name, ip string, p Policy, ports ...string) (api.VM, string) {
	t.Helper()
	v := api.VM{ID: "test-" + name, Name: name, Network: "nat", IP: ip, Ports: ports}
	if _, err := s.r.Attach(context.Background(), v, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.r.Detach(context.Background(), v) })
	return v, s.guest(t, v)
}

// guest makes a namespace whose eth0 (a TAP) carries v's address and
// MAC, and relays its frames to and from v's TAP.
func (s *site) guest(t testing.TB, v api.VM) string {
	t.Helper()
	g := testenv.NetNS(t)
	host := openTAP(t, s.ns, hostnet.TAPName(v.ID))
	eth0 := openTAP(t, g, "eth0")
	testenv.IP(t, "-n", g, "link", "set", "eth0", "address", hostnet.MAC(v.ID).String(), "up")
	testenv.IP(t, "-n", g, "addr", "add", v.IP+"/24", "dev", "eth0")
	testenv.IP(t, "-n", g, "route", "add", "default", "via", "10.253.0.1")
	relay := func(dst, src *os.File) {
		buf := make([]byte, 65536)
		for {
			k, err := src.Read(buf)
			if err != nil {
				return
			}
			dst.Write(buf[:k])
		}
	}
	go relay(host, eth0)
	go relay(eth0, host)
	bridgeForwards(t, s.ns, hostnet.TAPName(v.ID))
	return g
}

// openTAP attaches to (or, if there is none, creates) the TAP name in
// ns, without a vnet header: each read and write is one frame.
func openTAP(t testing.TB, ns, name string) *os.File {
	t.Helper()
	var f *os.File
	err := hostnet.InNetNS(ns, func() error {
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

// bridgeForwards waits until the bridge forwards on tap (the kernel
// tells it of the carrier late).
func bridgeForwards(t testing.TB, ns, tap string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		out, err := system.Runner{}.Run(context.Background(), "ip", "netns", "exec", ns, "bridge", "-j", "link", "show", "dev", tap)
		if err == nil && strings.Contains(string(out), `"state":"forwarding"`) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the bridge does not forward on %s: %s %v", tap, out, err)
		}
	}
}

func listen(t testing.TB, ns, addr string, handle func(net.Conn)) {
	t.Helper()
	var ln net.Listener
	if err := hostnet.InNetNS(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, ln, handle)
}

// resolve asks banger's DNS server from the guest g.
func resolve(t *testing.T, g, name string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	var r *dns.Msg
	err := hostnet.InNetNS(g, func() (err error) {
		r, _, err = (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, "10.253.0.1:53")
		return
	})
	if err != nil {
		t.Fatalf("resolving %s: %v", name, err)
	}
	return r
}

// answer is the address and TTL of r's A record, or its rcode.
func answer(r *dns.Msg) string {
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return fmt.Sprintf("%s ttl %d", a.A, a.Hdr.Ttl)
		}
	}
	return dns.RcodeToString[r.Rcode]
}

// reach connects from ns to addr and returns the line the server sent
// (the address it saw), or the error.
func reach(ns, addr string) (string, error) {
	var c net.Conn
	err := hostnet.InNetNS(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr, 700*time.Millisecond); return })
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func mustReach(t *testing.T, from, to, saw, why string) {
	t.Helper()
	got, err := reach(from, to)
	if saw == "" && err == nil {
		t.Errorf("%s: reached %s, want it refused", why, to)
	}
	if saw != "" && (err != nil || got != saw) {
		t.Errorf("%s: %s saw %q, %v; want %s", why, to, got, err, saw)
	}
}

func mustParse(t testing.TB, allow, deny []string) Policy {
	t.Helper()
	p, err := ParsePolicy(allow, deny)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func dialFrom(t *testing.T, ns, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	if err := hostnet.InNetNS(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr, time.Second); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip echoes a line over c: want nil for it back, or an errno.
func roundTrip(t *testing.T, c net.Conn, want error) {
	t.Helper()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	_, err := fmt.Fprintln(c, "ping")
	if err == nil {
		var line string
		if line, err = bufio.NewReader(c).ReadString('\n'); err == nil && line != "ping\n" {
			err = fmt.Errorf("echoed %q", line)
		}
	}
	if want == nil && err != nil || want != nil && !errors.Is(err, want) {
		t.Errorf("round trip: %v, want %v", err, want)
	}
}

func (s *site) learned(t *testing.T) string {
	t.Helper()
	out, err := system.Runner{}.Run(context.Background(), "ip", "netns", "exec", s.ns, "nft", "list", "set", "inet", hostnet.TableName, hostnet.LearnedSet)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestEgress(t *testing.T) {
	s := newSite(t)
	def, g1 := s.vm(t, "def", "10.253.0.2", Policy{}, "127.0.0.1:18095:8080")
	listen(t, g1, "0.0.0.0:8080", testenv.TellRemoteIP)
	allow := mustParse(t, []string{"web.test,meta.test", "10.99.0.5"}, nil)
	api1, g2 := s.vm(t, "api", "10.253.0.3", allow)
	listen(t, s.ns, "10.253.0.1:7002", testenv.TellRemoteIP) // a host service on the bridge address

	t.Run("default policy", func(t *testing.T) {
		if got := answer(resolve(t, g1, "other.test")); got != "198.51.100.3 ttl 3600" {
			t.Errorf("other.test for a VM without an allow-list: %s", got)
		}
		if got := answer(resolve(t, g1, "api.vm")); !strings.HasPrefix(got, "10.253.0.3 ") {
			t.Errorf("api.vm: %s", got)
		}
		mustReach(t, g1, "198.51.100.2:7000", "198.51.100.1", "the outside")
		mustReach(t, g1, "10.253.0.1:7002", "", "a host service on the bridge address")
		mustReach(t, g1, "169.254.169.254:7000", "", "a metadata server")
		mustReach(t, g1, "10.99.0.5:7000", "", "a private-range host")
		mustReach(t, g1, "10.253.0.3:8080", "", "another VM")
		// Published ports: the host connects to the guest, whose
		// replies come back.
		mustReach(t, s.ns, "127.0.0.1:18095", "10.253.0.1", "a published port")
	})

	t.Run("allow-list", func(t *testing.T) {
		mustReach(t, g2, "198.51.100.2:7000", "", "an address before its allowed name was resolved")
		for _, name := range []string{"other.test", "aGVsbG8gZnJvbSBpbnNpZGUgdGhlIHNhbmRib3g.x1.other.test", "web.test.other.test"} {
			before := s.up.count(name + ".")
			if got := answer(resolve(t, g2, name)); got != "NXDOMAIN" {
				t.Errorf("%s, not allowed: %s", name, got)
			}
			if n := s.up.count(name + "."); n != before {
				t.Errorf("the upstream was asked %s (%d times, %d before)", name, n, before)
			}
		}
		// web.test's TTL (5 s) is kept in the answer; its address stays
		// reachable for LearnFloor.
		if got := answer(resolve(t, g2, "web.test")); got != "198.51.100.2 ttl 5" {
			t.Errorf("web.test: %s", got)
		}
		if l := s.learned(t); !strings.Contains(l, `10.253.0.3 . 198.51.100.2 timeout 30s expires`) || !strings.Contains(l, `"vm api: web.test"`) {
			t.Errorf("learned:\n%s", l)
		}
		mustReach(t, g2, "198.51.100.2:7000", "198.51.100.1", "web.test, resolved through banger's DNS")
		mustReach(t, g2, "198.51.100.3:7000", "", "other.test's address")
		mustReach(t, g2, "10.99.0.5:7000", "198.51.100.1", "an allowed private address")
		// An allowed name that points at the metadata server resolves,
		// and stays closed.
		if got := answer(resolve(t, g2, "meta.test")); got != "169.254.169.254 ttl 60" {
			t.Errorf("meta.test: %s", got)
		}
		mustReach(t, g2, "169.254.169.254:7000", "", "an allowed name's link-local address")
		mustReach(t, g2, "10.253.0.1:7002", "", "a host service")
		if got := answer(resolve(t, g2, "def.vm")); !strings.HasPrefix(got, "10.253.0.2 ") {
			t.Errorf("def.vm for a VM with an allow-list: %s", got)
		}
	})

	t.Run("changing a running VM's policy", func(t *testing.T) {
		ctx := context.Background()
		conn := dialFrom(t, g1, "198.51.100.3:7001")
		roundTrip(t, conn, nil)
		if err := s.r.SetPolicy(ctx, def, mustParse(t, []string{"web.test"}, nil)); err != nil {
			t.Fatal(err)
		}
		roundTrip(t, conn, syscall.ECONNRESET) // its next packet meets the new policy
		mustReach(t, g1, "198.51.100.3:7000", "", "other.test's address, now closed")
		if got := answer(resolve(t, g1, "other.test")); got != "NXDOMAIN" {
			t.Errorf("other.test, now not allowed: %s", got)
		}
		if p, ok := s.r.Policy(def); !ok || fmt.Sprint(p.AllowDomains) != "[web.test]" {
			t.Errorf("Policy = %+v, %v", p, ok)
		}
		if err := s.r.SetPolicy(ctx, def, Policy{}); err != nil {
			t.Fatal(err)
		}
		mustReach(t, g1, "198.51.100.3:7000", "198.51.100.1", "the outside, open again")

		// A connection to a resolved name survives a change that keeps
		// the name, and is reset by one that drops it.
		resolve(t, g2, "web.test")
		conn = dialFrom(t, g2, "198.51.100.2:7001")
		roundTrip(t, conn, nil)
		if err := s.r.SetPolicy(ctx, api1, mustParse(t, []string{"web.test,other.test"}, nil)); err != nil {
			t.Fatal(err)
		}
		roundTrip(t, conn, nil)
		mustReach(t, g2, "10.99.0.5:7000", "", "a private address no longer listed")
		if err := s.r.SetPolicy(ctx, api1, mustParse(t, []string{"other.test"}, nil)); err != nil {
			t.Fatal(err)
		}
		roundTrip(t, conn, syscall.ECONNRESET)
		if l := s.learned(t); strings.Contains(l, "198.51.100.2") {
			t.Errorf("web.test's address outlived its name in the policy:\n%s", l)
		}
		// deny-out on top of the default.
		conn = dialFrom(t, g1, "198.51.100.2:7001")
		roundTrip(t, conn, nil)
		if err := s.r.SetPolicy(ctx, def, mustParse(t, nil, []string{"198.51.100.2"})); err != nil {
			t.Fatal(err)
		}
		roundTrip(t, conn, syscall.ECONNRESET)
		mustReach(t, g1, "198.51.100.3:7000", "198.51.100.1", "the outside but the denied address")

		// A stopped VM has nothing to change; junk is refused and
		// changes nothing.
		if err := s.r.SetPolicy(ctx, api.VM{ID: "stopped", Name: "stopped", Network: "nat"}, allow); err != nil {
			t.Errorf("SetPolicy of a VM not attached: %v", err)
		}
		junk := Policy{AllowDomains: []string{"a..b"}}
		if err := s.r.SetPolicy(ctx, api1, junk); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("SetPolicy with junk: %v", err)
		}
		if p, _ := s.r.Policy(api1); fmt.Sprint(p.AllowDomains) != "[other.test]" {
			t.Errorf("junk changed the policy: %+v", p)
		}
		if _, err := s.r.Attach(ctx, api.VM{ID: "junk", Name: "junk", Network: "nat", IP: "10.253.0.9"}, junk); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("Attach with junk: %v", err)
		}
	})

	t.Run("detach", func(t *testing.T) {
		resolve(t, g2, "other.test")
		s.r.Detach(context.Background(), api1)
		if l := s.learned(t); strings.Contains(l, "10.253.0.3") {
			t.Errorf("a detached VM's learned addresses stay:\n%s", l)
		}
		if v := (dnsFilter{s.r}).Check(netip.MustParseAddr("10.253.0.3"), "web.test."); v != 0 {
			t.Errorf("a detached VM's address is still judged by its policy: %v", v)
		}
	})
}

// TestLearnQuota: a VM holds at most its share of the learned set (the
// set is all VMs'): past it, answers are SERVFAIL until some of its
// addresses go.
func TestLearnQuota(t *testing.T) {
	s := newSite(t)
	s.r.learnQuota = 1
	v, g := s.vm(t, "q", "10.253.0.4", mustParse(t, []string{"web.test,other.test"}, nil))
	if got := answer(resolve(t, g, "web.test")); got != "198.51.100.2 ttl 5" {
		t.Errorf("web.test: %s", got)
	}
	if got := answer(resolve(t, g, "web.test")); got != "198.51.100.2 ttl 5" {
		t.Errorf("web.test again (the address it has): %s", got)
	}
	if got := answer(resolve(t, g, "other.test")); got != "SERVFAIL" {
		t.Errorf("other.test past the quota: %s", got)
	}
	mustReach(t, g, "198.51.100.3:7000", "", "an address refused by the quota")
	// Its owner drops web.test: its address goes, and other.test fits.
	if err := s.r.SetPolicy(context.Background(), v, mustParse(t, []string{"other.test"}, nil)); err != nil {
		t.Fatal(err)
	}
	if got := answer(resolve(t, g, "other.test")); got != "198.51.100.3 ttl 600" {
		t.Errorf("other.test once web.test's address went: %s", got)
	}
	mustReach(t, g, "198.51.100.3:7000", "198.51.100.1", "other.test")
}
