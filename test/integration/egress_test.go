package integration

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"

	"banger/internal/hostnet"
	"banger/internal/testenv"
)

// egressWorld is a network of the test's own beyond the daemon's host: a
// namespace behind a veth holding a server that tells each client its
// address on 198.51.100.2 and .3 (the "internet"), on 10.99.0.5 (a LAN
// database) and on 169.254.169.254 (a cloud's metadata service), and a
// DNS server that knows web.test and other.test and counts what it is
// asked.
type egressWorld struct {
	asked    map[string]*atomic.Int32
	upstream string // the DNS server's address, for BANGER_DNS_UPSTREAM
}

func (in *instance) egressWorld() *egressWorld {
	t := in.t
	out := testenv.NetNS(t)
	testenv.IP(t, "-n", in.netns, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", out)
	testenv.IP(t, "-n", in.netns, "addr", "add", "198.51.100.1/24", "dev", "up0")
	testenv.IP(t, "-n", in.netns, "link", "set", "up0", "up")
	for _, a := range []string{"198.51.100.2/24", "198.51.100.3/24", "10.99.0.5/24", "169.254.169.254/16"} {
		testenv.IP(t, "-n", out, "addr", "add", a, "dev", "eth0")
	}
	testenv.IP(t, "-n", out, "link", "set", "eth0", "up")
	testenv.IP(t, "-n", out, "route", "add", "default", "via", "198.51.100.1")
	// The host routes the LAN and the link-local address to the outside
	// too, as a cloud host would: only banger's rules stand between.
	testenv.IP(t, "-n", in.netns, "route", "add", "10.99.0.0/24", "via", "198.51.100.2")
	testenv.IP(t, "-n", in.netns, "route", "add", "169.254.169.254/32", "via", "198.51.100.2")
	for _, addr := range []string{"198.51.100.2:7000", "198.51.100.3:7000", "10.99.0.5:7000", "169.254.169.254:80"} {
		var ln net.Listener
		if err := hostnet.InNetNS(out, func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
			t.Fatal(err)
		}
		testenv.Serve(t, ln, testenv.TellRemoteIP)
	}
	w := &egressWorld{asked: map[string]*atomic.Int32{"web.test.": {}, "other.test.": {}, "tunnel.other.test.": {}}}
	// The daemon forwards from its own namespace (only the VM network
	// lives in the test's): the upstream listens on loopback there.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.upstream = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(rw dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0].Name
		for name, n := range w.asked {
			if strings.HasSuffix(q, name) {
				n.Add(1)
			}
		}
		addr := map[string]net.IP{"web.test.": net.IPv4(198, 51, 100, 2), "other.test.": net.IPv4(198, 51, 100, 3)}[q]
		if addr != nil && r.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: addr})
		} else if addr == nil {
			m.Rcode = dns.RcodeNameError
		}
		rw.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return w
}

// reaches is what the guest of VM name gets from addr: the address the
// server saw, or "" when it could not connect.
func (in *instance) reaches(name, addr string) string {
	in.t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	_, out, _ := in.code(nil, "vm", "exec", name, "--", "/bin/busybox", "sh", "-c", "/bin/busybox nc -w 3 "+host+" "+port+" </dev/null")
	return strings.TrimSpace(out)
}

// resolves is what the guest's resolver (banger's DNS) answers for host:
// an address, or "" for none.
func (in *instance) resolves(name, host string) string {
	in.t.Helper()
	_, out, _ := in.code(nil, "vm", "exec", name, "--", "/bin/busybox", "nslookup", host)
	// busybox prints the server first, then each address of the name.
	var a string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Address:" && !strings.HasPrefix(f[1], "10.253.0.1") && !strings.Contains(f[1], ":") {
			a = f[1]
		}
	}
	if a == "" {
		in.t.Logf("%s: nslookup %s: %q", name, host, out)
	}
	return a
}

// TestVMEgress: what guests may reach, by the rules, in a network of the
// test's own. The default reaches the internet but not the host's own
// services, the metadata address or the LAN; --allow-out lets a VM reach
// exactly a name or an address; vm policy changes a running VM's rules
// at once; names not allowed get NXDOMAIN and never reach the upstream.
func TestVMEgress(t *testing.T) {
	testenv.RequireBinary(t, "nft", "apt-get install nftables")
	in := newInstance(t)
	w := in.egressWorld()
	in.env = append(in.env, "BANGER_DNS_UPSTREAM="+w.upstream)
	vmFixtures(t, in)
	// A service of the host's own, on the bridge address.
	var hostSvc net.Listener
	create := func(name string, extra ...string) []string {
		return append([]string{"vm", "create", "--name", name, "--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu"}, extra...)
	}
	for _, junk := range []string{"*.", "300.1.1.1", "a..b", "web.test,,x.test", "*", "10.99.0.5/24"} {
		in.fails("--allow-out", create("junk", "--allow-out", junk)...)
	}
	if names := in.vmNames(); len(names) != 0 {
		t.Fatalf("refused creates left %v", names)
	}
	in.ok(create("d1")...)
	if err := in.inNS(func() (err error) { hostSvc, err = net.Listen("tcp", "10.253.0.1:9999"); return }); err != nil {
		t.Fatal(err)
	}
	testenv.Serve(t, hostSvc, testenv.TellRemoteIP)
	in.ok(create("a1", "--allow-out", "web.test")...)

	// The default: the internet, nothing else.
	if got := in.reaches("d1", "198.51.100.2:7000"); got != "198.51.100.1" {
		t.Errorf("default VM to the internet: %q, want the NAT address", got)
	}
	for _, addr := range []string{"10.253.0.1:9999", "169.254.169.254:80", "10.99.0.5:7000"} {
		if got := in.reaches("d1", addr); got != "" {
			t.Errorf("default VM reached %s: %q", addr, got)
		}
	}
	if got := in.resolves("d1", "web.test"); got != "198.51.100.2" {
		t.Errorf("default VM resolves web.test: %q", got)
	}

	// An allow-list: web.test, once resolved, and nothing else.
	if got := in.resolves("a1", "web.test"); got != "198.51.100.2" {
		t.Errorf("a1 resolves web.test: %q", got)
	}
	if got := in.reaches("a1", "198.51.100.2:7000"); got == "" {
		t.Error("a1 did not reach web.test")
	}
	before := w.asked["other.test."].Load()
	if got := in.resolves("a1", "other.test"); got != "" {
		t.Errorf("a1 resolved a name it may not: %q", got)
	}
	if got := in.resolves("a1", "x7f3k2a9q0m4p8z1.tunnel.other.test"); got != "" {
		t.Errorf("a1 resolved a tunnelling name: %q", got)
	}
	if n := w.asked["other.test."].Load(); n != before {
		t.Errorf("names a1 may not resolve reached the upstream (%d queries)", n-before)
	}
	for _, addr := range []string{"198.51.100.3:7000", "10.99.0.5:7000", "10.253.0.1:9999"} {
		if got := in.reaches("a1", addr); got != "" {
			t.Errorf("a1 reached %s: %q", addr, got)
		}
	}
	if show := in.ok("vm", "show", "a1"); !strings.Contains(show, "web.test") {
		t.Errorf("vm show a1 lacks its rules:\n%s", show)
	}

	// vm policy on the running VMs: at once.
	in.ok("vm", "policy", "a1", "--allow-out", "10.99.0.5")
	if got := in.reaches("a1", "10.99.0.5:7000"); got == "" {
		t.Error("a1 did not reach 10.99.0.5 once allowed")
	}
	if got := in.reaches("a1", "198.51.100.2:7000"); got != "" {
		t.Errorf("a1 still reached web.test: %q", got)
	}
	in.ok("vm", "policy", "d1", "--deny-out", "198.51.100.0/24")
	if got := in.reaches("d1", "198.51.100.2:7000"); got != "" {
		t.Errorf("d1 reached a denied network: %q", got)
	}
	in.ok("vm", "policy", "d1", "--reset")
	if got := in.reaches("d1", "198.51.100.2:7000"); got == "" {
		t.Error("d1 did not reach the internet after --reset")
	}
	in.fails("--reset goes back", "vm", "policy", "d1", "--reset", "--allow-out", "x.test")
	in.ok("vm", "rm", "-f", "d1", "a1")
	// Nothing of them is left in the rules.
	if nft := in.nft(); strings.Contains(nft, "vm d1") || strings.Contains(nft, "vm a1") {
		t.Errorf("rules of removed VMs:\n%s", nft)
	}
}
