package vmnet

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"

	"banger/internal/api"
	"banger/internal/hostnet"
	"banger/internal/testenv"
)

// vethGuest replaces v's TAP with a veth of the same name whose other
// end is eth0 of a new namespace: a guest with no relay in userspace,
// so that what is measured is banger's path alone.
func (s *site) vethGuest(tb testing.TB, v api.VM) string {
	g := testenv.NetNS(tb)
	tap := hostnet.TAPName(v.ID)
	testenv.IP(tb, "-n", s.ns, "link", "del", tap)
	testenv.IP(tb, "-n", s.ns, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "address", hostnet.MAC(v.ID).String(), "netns", g)
	testenv.IP(tb, "-n", s.ns, "link", "set", tap, "master", hostnet.DefaultBridge, "up")
	testenv.IP(tb, "-n", g, "addr", "add", v.IP+"/24", "dev", "eth0")
	testenv.IP(tb, "-n", g, "link", "set", "eth0", "up")
	testenv.IP(tb, "-n", g, "route", "add", "default", "via", "10.253.0.1")
	return g
}

func (s *site) attach(tb testing.TB, name, ip string, p Policy) api.VM {
	tb.Helper()
	v := api.VM{ID: "bench-" + name, Name: name, Network: "nat", IP: ip}
	if _, err := s.r.Attach(context.Background(), v, p); err != nil {
		tb.Fatal(err)
	}
	return v
}

// BenchmarkEgressDNS compares, in one run, the time banger's DNS takes
// to answer a guest (a namespace behind a veth on the bridge) one
// question at a time:
//   - open: a name forwarded for a VM without an allow-list, as before
//     policies;
//   - allowed: the same name for a VM whose allow-list has it:
//     forwarded, and its address added to (or refreshed in) the VM's
//     set before the answer goes back;
//   - denied: a name its allow-list lacks (NXDOMAIN, not forwarded);
//   - local: NAME.vm, answered from memory.
//
// allowed/open is what the policy costs a question.
func BenchmarkEgressDNS(b *testing.B) {
	s := newSite(b)
	open := s.vethGuest(b, s.attach(b, "open", "10.253.0.2", Policy{}))
	closed := s.vethGuest(b, s.attach(b, "closed", "10.253.0.3", mustParse(b, []string{"*.test"}, nil)))
	for _, c := range []struct{ name, guest, q, want string }{
		{"open", open, "web.test.", "198.51.100.2"},
		{"allowed", closed, "web.test.", "198.51.100.2"},
		{"denied", closed, "web.example.", "NXDOMAIN"},
		{"local", closed, "open.vm.", "10.253.0.2"},
	} {
		b.Run(c.name, func(b *testing.B) {
			cl, conn := dnsClient(b, c.guest)
			m := new(dns.Msg)
			m.SetQuestion(c.q, dns.TypeA)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r, _, err := cl.ExchangeWithConn(m, conn)
				if err != nil {
					b.Fatal(err)
				}
				if got := answer(r); len(got) < len(c.want) || got[:len(c.want)] != c.want {
					b.Fatalf("%s: %s", c.q, got)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/answer")
		})
	}
}

// BenchmarkSetPolicy measures, in one run, SetPolicy on a running VM
// (the default policy to an allow-list of names and networks, and
// back: two changes an iteration), with that VM alone and with 100
// other VMs attached, against the same VM's network stop and start
// (Detach, then Attach with its TAP in place).
func BenchmarkSetPolicy(b *testing.B) {
	ctx := context.Background()
	allow := mustParse(b, []string{"web.test,*.example.com,10.99.0.5,203.0.113.0/24"}, []string{"203.0.113.9"})
	for _, others := range []int{0, 100} {
		b.Run(fmt.Sprintf("others=%d", others), func(b *testing.B) {
			s := newSite(b)
			for i := 0; i < others; i++ {
				s.attach(b, fmt.Sprint("o", i), fmt.Sprintf("10.253.0.%d", 10+i), Policy{})
			}
			v := s.attach(b, "vm", "10.253.0.2", Policy{})
			b.Run("set-policy", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if err := s.r.SetPolicy(ctx, v, allow); err != nil {
						b.Fatal(err)
					}
					if err := s.r.SetPolicy(ctx, v, Policy{}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(2*b.N)/1000, "ms/change")
			})
			b.Run("stop-start", func(b *testing.B) {
				var stop, start time.Duration
				for i := 0; i < b.N; i++ {
					t0 := time.Now()
					s.r.Detach(ctx, v)
					t1 := time.Now()
					if _, err := s.r.Attach(ctx, v, Policy{}); err != nil {
						b.Fatal(err)
					}
					stop, start = stop+t1.Sub(t0), start+time.Since(t1)
				}
				b.ReportMetric(float64(stop.Microseconds())/float64(b.N)/1000, "stop-ms")
				b.ReportMetric(float64(start.Microseconds())/float64(b.N)/1000, "start-ms")
			})
		})
	}
}

func dnsClient(tb testing.TB, g string) (*dns.Client, *dns.Conn) {
	cl := &dns.Client{Timeout: 3 * time.Second}
	var conn *dns.Conn
	if err := hostnet.InNetNS(g, func() (err error) { conn, err = cl.Dial("10.253.0.1:53"); return }); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return cl, conn
}
