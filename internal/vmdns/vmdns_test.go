package vmdns

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	return startFiltered(tb, nil, upstreams...)
}

func startFiltered(tb testing.TB, f Filter, upstreams ...string) (*Server, string) {
	tb.Helper()
	var opts []Option
	if f != nil {
		opts = append(opts, WithFilter(f))
	}
	s := New(netip.MustParsePrefix("10.253.0.0/24"), upstreams, opts...)
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

// counting is an upstream that answers every A question with one
// address and a TTL of 3600 s, and counts the questions it got by name.
type counting struct {
	mu   sync.Mutex
	seen map[string]int
}

func (c *counting) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	c.mu.Lock()
	c.seen[q.Name]++
	c.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	if q.Qtype == dns.TypeA {
		m.Answer = append(m.Answer,
			&dns.CNAME{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 7200}, Target: "edge.cdn.test."},
			&dns.A{Hdr: dns.RR_Header{Name: "edge.cdn.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3600}, A: net.IPv4(192, 0, 2, 7)},
			&dns.A{Hdr: dns.RR_Header{Name: "edge.cdn.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 20}, A: net.IPv4(192, 0, 2, 8)})
	}
	w.WriteMsg(m)
}

func (c *counting) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[name]
}

// fakeFilter restricts 127.0.0.1 to names under allow. test. and
// records what it learned, and when.
type fakeFilter struct {
	mu      sync.Mutex
	learned []string
	at      time.Time
	fail    atomic.Bool
}

func (f *fakeFilter) Check(client netip.Addr, name string) Verdict {
	switch {
	case client != netip.MustParseAddr("127.0.0.1"):
		return Open
	case strings.HasSuffix(name, ".allow.test."):
		return Allow
	}
	return Deny
}

func (f *fakeFilter) Learned(client netip.Addr, name string, addrs []netip.Addr, ttl time.Duration) (time.Duration, error) {
	if f.fail.Load() {
		return 0, errors.New("no nftables")
	}
	time.Sleep(50 * time.Millisecond) // an answer sent before this returns would show
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range addrs {
		f.learned = append(f.learned, name+" "+a.String()+" "+ttl.String())
	}
	f.at = time.Now()
	return 10 * time.Minute, nil
}

func TestFilter(t *testing.T) {
	up := &counting{seen: map[string]int{}}
	f := &fakeFilter{}
	s, addr := startFiltered(t, f, serveOn(t, up))
	s.Set("web", netip.MustParseAddr("10.253.0.2"))
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			f.mu.Lock()
			f.learned = nil
			f.mu.Unlock()
			// Allowed: forwarded, its addresses (behind a CNAME) learned
			// before the answer left, TTLs capped at what the filter said.
			r := ask(t, network, addr, "www.ALLOW.test.", dns.TypeA)
			got := time.Now()
			f.mu.Lock()
			learned, at := strings.Join(f.learned, ", "), f.at
			f.mu.Unlock()
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 3 {
				t.Fatalf("allowed name: %v", r)
			}
			if learned != "www.allow.test. 192.0.2.7 1h0m0s, www.allow.test. 192.0.2.8 1h0m0s" {
				t.Errorf("learned %q", learned)
			}
			if at.IsZero() || at.After(got) {
				t.Errorf("the answer arrived before the filter had learned its addresses")
			}
			for _, rr := range r.Answer {
				if want := min(rr.Header().Ttl, 600); rr.Header().Ttl > 600 || rr.Header().Ttl != want {
					t.Errorf("TTL of %s = %d, want at most 600", rr.Header().Name, rr.Header().Ttl)
				}
			}
			if r.Answer[2].Header().Ttl != 20 {
				t.Errorf("a short TTL was changed: %v", r.Answer[2])
			}
			// Denied: NXDOMAIN, and the upstream never saw it, nor a long
			// random label under it (a tunnel).
			for _, name := range []string{"other.test.", "aGVsbG8gdGhlcmUgaG93IGFyZSB5b3UgZG9pbmcgdG9kYXk.t1.other.test."} {
				if r := ask(t, network, addr, name, dns.TypeTXT); r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
					t.Errorf("denied %s: %v", name, r)
				}
				if n := up.count(name); n != 0 {
					t.Errorf("the upstream was asked %s %d times", name, n)
				}
			}
			// NAME.vm and reverse names are local, and answered.
			if r := ask(t, network, addr, "web.vm.", dns.TypeA); len(r.Answer) != 1 {
				t.Errorf("web.vm for a filtered client: %v", r)
			}
			if r := ask(t, network, addr, "2.0.253.10.in-addr.arpa.", dns.TypePTR); len(r.Answer) != 1 {
				t.Errorf("PTR for a filtered client: %v", r)
			}
		})
	}
	// A filter that cannot learn: SERVFAIL, not an address the guest
	// could not reach.
	f.fail.Store(true)
	if r := ask(t, "udp", addr, "www.allow.test.", dns.TypeA); r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
		t.Errorf("answer when learning failed: %v", r)
	}
}

// TestFilterOpenClient: a client the filter leaves open is served as
// without a filter (the host through systemd-resolved, VMs without an
// allow-list).
func TestFilterOpenClient(t *testing.T) {
	up := &counting{seen: map[string]int{}}
	f := &fakeFilter{}
	_, addr := startFiltered(t, openFilter{f}, serveOn(t, up))
	r := ask(t, "udp", addr, "other.test.", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 3 || r.Answer[1].Header().Ttl != 3600 || up.count("other.test.") != 1 {
		t.Errorf("open client: %v (upstream asked %d times)", r, up.count("other.test."))
	}
	if len(f.learned) != 0 {
		t.Errorf("learned for an open client: %v", f.learned)
	}
}

type openFilter struct{ *fakeFilter }

func (openFilter) Check(netip.Addr, string) Verdict { return Open }
