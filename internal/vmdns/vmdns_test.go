package vmdns

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// upstream is a real DNS server on loopback standing in for the host's
// resolver: example.test has an address, big.test a TXT record too big
// for a 512-byte UDP answer.
func upstream(tb testing.TB) string {
	tb.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		switch q.Name {
		case "example.test.":
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)})
		case "big.test.":
			for i := 0; i < 20; i++ {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{strings.Repeat("x", 100)}})
			}
			if w.LocalAddr().Network() == "udp" {
				m.Truncate(dns.MinMsgSize)
			}
		default:
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	return serveOn(tb, h)
}

// serveOn serves h on loopback over UDP and TCP on one port.
func serveOn(tb testing.TB, h dns.Handler) string {
	tb.Helper()
	for {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue // the TCP port was taken; try another
		}
		u, t := &dns.Server{PacketConn: pc, Handler: h}, &dns.Server{Listener: ln, Handler: h}
		go u.ActivateAndServe()
		go t.ActivateAndServe()
		tb.Cleanup(func() { u.Shutdown(); t.Shutdown() })
		return pc.LocalAddr().String()
	}
}

func startServer(tb testing.TB, upstreams ...string) (*Server, string) {
	tb.Helper()
	s := New(netip.MustParsePrefix("10.253.0.0/24"), upstreams)
	tb.Cleanup(func() { s.Close() })
	return s, serveOn(tb, s)
}

func ask(t *testing.T, network, server, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: network}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	return r
}

func TestAnswersVMsAndForwards(t *testing.T) {
	s, addr := startServer(t, upstream(t))
	s.Set("web", netip.MustParseAddr("10.253.0.2"))
	s.Set("DB", netip.MustParseAddr("10.253.0.3"))
	for _, network := range []string{"udp", "tcp"} {
		r := ask(t, network, addr, "web.vm.", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.253.0.2" || !r.Authoritative {
			t.Errorf("%s web.vm A: %v", network, r)
		}
		if r := ask(t, network, addr, "Db.VM.", dns.TypeA); len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.253.0.3" {
			t.Errorf("%s: names are case-insensitive: %v", network, r)
		}
		if r := ask(t, network, addr, "web.vm.", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
			t.Errorf("%s web.vm AAAA: want NODATA, got %v", network, r)
		}
		if r := ask(t, network, addr, "nope.vm.", dns.TypeA); r.Rcode != dns.RcodeNameError {
			t.Errorf("%s nope.vm: want NXDOMAIN, got %v", network, r)
		}
		r = ask(t, network, addr, "2.0.253.10.in-addr.arpa.", dns.TypePTR)
		if len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "web.vm." {
			t.Errorf("%s PTR: %v", network, r)
		}
		if r := ask(t, network, addr, "9.0.253.10.in-addr.arpa.", dns.TypePTR); r.Rcode != dns.RcodeNameError {
			t.Errorf("%s PTR of a free address: %v", network, r)
		}
		r = ask(t, network, addr, "example.test.", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.7" {
			t.Errorf("%s forwarded example.test: %v", network, r)
		}
		if r := ask(t, network, addr, "missing.test.", dns.TypeA); r.Rcode != dns.RcodeNameError {
			t.Errorf("%s forwarded NXDOMAIN: %v", network, r)
		}
	}
	// Too big for UDP: truncated there, whole over TCP.
	if r := ask(t, "udp", addr, "big.test.", dns.TypeTXT); !r.Truncated {
		t.Errorf("big answer over UDP not truncated: %d records", len(r.Answer))
	}
	if r := ask(t, "tcp", addr, "big.test.", dns.TypeTXT); r.Truncated || len(r.Answer) != 20 {
		t.Errorf("big answer over TCP: truncated=%v, %d records", r.Truncated, len(r.Answer))
	}
	// A VM that goes stops answering.
	s.Remove("web")
	if r := ask(t, "udp", addr, "web.vm.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("removed VM still answers: %v", r)
	}
	if r := ask(t, "udp", addr, "2.0.253.10.in-addr.arpa.", dns.TypePTR); r.Rcode != dns.RcodeNameError {
		t.Errorf("removed VM's PTR still answers: %v", r)
	}
}

func TestUnreachableUpstreamIsServfail(t *testing.T) {
	// A port nothing listens on: the question fails fast (ICMP refused).
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	dead := pc.LocalAddr().String()
	pc.Close()
	_, addr := startServer(t, dead)
	if r := ask(t, "udp", addr, "example.test.", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("want SERVFAIL, got %v", r)
	}
}

func TestHostResolvers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("# comment\nnameserver 127.0.0.53\nnameserver 10.253.0.1\nsearch lan\nnameserver 2001:db8::1\nnameserver bogus\n"), 0o644)
	got, err := HostResolvers(p, netip.MustParseAddr("10.253.0.1"))
	if err != nil || strings.Join(got, " ") != "127.0.0.53:53 [2001:db8::1]:53" {
		t.Errorf("HostResolvers = %v, %v", got, err)
	}
}

// BenchmarkDNS compares, in one run, a question banger answers itself
// (a VM name) and one it forwards with the same question asked of the
// upstream directly: the forwarding overhead is forwarded/direct.
func BenchmarkDNS(b *testing.B) {
	up := upstream(b)
	s, addr := startServer(b, up)
	s.Set("web", netip.MustParseAddr("10.253.0.2"))
	for _, c := range []struct{ name, server, q string }{
		{"local", addr, "web.vm."},
		{"forwarded", addr, "example.test."},
		{"direct", up, "example.test."},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				cl := &dns.Client{Net: "udp"}
				conn, err := cl.Dial(c.server)
				if err != nil {
					b.Error(err)
					return
				}
				defer conn.Close()
				m := new(dns.Msg)
				m.SetQuestion(c.q, dns.TypeA)
				for pb.Next() {
					r, _, err := cl.ExchangeWithConn(m, conn)
					if err != nil || len(r.Answer) != 1 {
						b.Errorf("%s: %v %v", c.q, r, err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
		})
	}
}
