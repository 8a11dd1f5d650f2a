package hostnet

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"banger/internal/system"
	"banger/internal/testenv"
)

// BenchmarkVMNetworkSetup measures what starting and stopping one VM
// costs the network: its TAP on the bridge and its rules, then their
// removal. banger does it over netlink in-process; the baseline runs the
// same steps as `ip` and `nft` commands, as the first banger did.
func BenchmarkVMNetworkSetup(b *testing.B) {
	testenv.RequireBinary(b, "nft", "apt-get install nftables")
	ns := testenv.NetNS(b)
	n, err := Open(Config{NetNS: ns, StateDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	if err := n.EnsureBridge(); err != nil {
		b.Fatal(err)
	}
	// Steady state: another VM is running, so the tables stay.
	other := Endpoint{VM: "other", TAP: "bg-other", MAC: MAC("other"), IP: netip.MustParseAddr("10.253.0.3"), Mode: NAT}
	ep := Endpoint{VM: "bench", TAP: TAPName("bench"), MAC: MAC("bench"), IP: netip.MustParseAddr("10.253.0.2"), Mode: NAT}
	// A VM keeps its TAP while it exists: a stop and start changes the
	// rules only.
	b.Run("banger-stop-start", func(b *testing.B) {
		if err := n.AddTAP(ep.TAP); err != nil {
			b.Fatal(err)
		}
		defer n.DelTAP(ep.TAP)
		var start, stop time.Duration
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			if err := n.AddTAP(ep.TAP); err != nil {
				b.Fatal(err)
			}
			if err := n.Apply([]Endpoint{other, ep}); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if err := n.Apply([]Endpoint{other}); err != nil {
				b.Fatal(err)
			}
			start, stop = start+t1.Sub(t0), stop+time.Since(t1)
		}
		b.ReportMetric(float64(start.Microseconds())/float64(b.N)/1000, "start-ms")
		b.ReportMetric(float64(stop.Microseconds())/float64(b.N)/1000, "stop-ms")
	})
	b.Run("banger-create-rm", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := n.AddTAP(ep.TAP); err != nil {
				b.Fatal(err)
			}
			if err := n.Apply([]Endpoint{other, ep}); err != nil {
				b.Fatal(err)
			}
			if err := n.DelTAP(ep.TAP); err != nil {
				b.Fatal(err)
			}
			if err := n.Apply([]Endpoint{other}); err != nil {
				b.Fatal(err)
			}
		}
	})
	const table = `table inet banger {
	chain postrouting { type nat hook postrouting priority srcnat; ip saddr 10.253.0.3 oifname != "banger0" masquerade; %s}
}
table bridge banger {
	chain forward { type filter hook forward priority 0; iifname "bg-*" oifname "bg-*" drop; }
}
`
	up := "flush ruleset\n" + fmt.Sprintf(table, `ip saddr 10.253.0.2 oifname != "banger0" masquerade; `)
	down := "flush ruleset\n" + fmt.Sprintf(table, "")
	r := system.Runner{}
	ctx := context.Background()
	run := func(b *testing.B, stdin string, name string, args ...string) {
		var err error
		if stdin != "" {
			_, err = r.RunStdin(ctx, strings.NewReader(stdin), name, args...)
		} else {
			_, err = r.Run(ctx, name, args...)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Run("ip-nft-commands", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			run(b, "", "ip", "-n", ns, "tuntap", "add", "dev", ep.TAP, "mode", "tap", "vnet_hdr")
			run(b, "", "ip", "-n", ns, "link", "set", ep.TAP, "master", DefaultBridge, "up")
			run(b, up, "nsenter", "--net=/run/netns/"+ns, "nft", "-f", "-")
			run(b, "", "ip", "-n", ns, "link", "del", ep.TAP)
			run(b, down, "nsenter", "--net=/run/netns/"+ns, "nft", "-f", "-")
		}
	})
}

// BenchmarkForward compares a TCP stream through a published port (the
// userspace proxy) with the same stream straight to the guest.
func BenchmarkForward(b *testing.B) {
	n, ns := netWithGuest(b)
	p, _ := ParsePort("18081:7")
	f, err := n.Forward(p, netip.MustParseAddr("10.253.0.11"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 256<<10)
	rand.Read(chunk)
	for _, c := range []struct{ name, addr string }{{"proxy", "127.0.0.1:18081"}, {"direct", "10.253.0.11:7"}} {
		b.Run(c.name, func(b *testing.B) {
			var conn net.Conn
			if err := InNetNS(ns, func() (err error) { conn, err = net.Dial("tcp", c.addr); return }); err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			b.SetBytes(int64(len(chunk)))
			done := make(chan error, 1)
			go func() {
				_, err := io.CopyN(io.Discard, conn, int64(b.N)*int64(len(chunk)))
				done <- err
			}()
			for i := 0; i < b.N; i++ {
				if _, err := conn.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkGuard measures what the guard (the bridge prerouting chain
// and its set of VM addresses) costs, against the same rules with the
// guard's chain emptied (the rules before the guard existed), and
// frames also with a guard that holds a full /24 of VMs:
//   - rtt: a 1-byte TCP round trip between the host and a guest (a
//     namespace behind a veth on the bridge);
//   - frame: one frame written into a VM's TAP with the VM's own
//     addresses, through the bridge and the host's IP and UDP stack to
//     a socket whose full buffer drops it. The write does all of that
//     before it returns, with no scheduling in between: the precise
//     per-frame cost on a loaded machine.
func BenchmarkGuard(b *testing.B) {
	testenv.RequireBinary(b, "nft", "apt-get install nftables")
	unguard := func(b *testing.B, ns string) {
		if _, err := (system.Runner{}).Run(context.Background(), "ip", "netns", "exec", ns, "nft", "flush", "chain", "bridge", TableName, "prerouting"); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("rtt", func(b *testing.B) {
		n, ns := netWithGuest(b)
		var conn net.Conn
		if err := InNetNS(ns, func() (err error) { conn, err = net.Dial("tcp", "10.253.0.11:7"); return }); err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		for _, guarded := range []bool{false, true} {
			b.Run(map[bool]string{false: "unguarded", true: "guarded"}[guarded], func(b *testing.B) {
				if err := n.Apply([]Endpoint{endpoint("g1", "bg-g1", "10.253.0.11", NAT)}); err != nil {
					b.Fatal(err)
				}
				if !guarded {
					unguard(b, ns)
				}
				buf := []byte{0}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := conn.Write(buf); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(conn, buf); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	})
	b.Run("frame", func(b *testing.B) {
		g := newGuarded(b)
		fr := g.legitUDP(g.brMAC, g.gw, []byte("x"))
		// A full /24: the guard's lookups are hashed, so its cost must
		// not grow with the number of VMs.
		full := []Endpoint{g.vm1, g.vm2}
		for i := 20; i < 255; i++ {
			a := netip.AddrFrom4([4]byte{10, 253, 0, byte(i)})
			full = append(full, endpoint(fmt.Sprint("vm", i), fmt.Sprintf("bg-%d", i), a.String(), NAT))
		}
		for _, c := range []struct {
			name    string
			eps     []Endpoint
			guarded bool
		}{
			{"unguarded", []Endpoint{g.vm1, g.vm2}, false},
			{"guarded", []Endpoint{g.vm1, g.vm2}, true},
			{"guarded-237-vms", full, true},
		} {
			b.Run(c.name, func(b *testing.B) {
				if err := g.n.Apply(c.eps); err != nil {
					b.Fatal(err)
				}
				if !c.guarded {
					unguard(b, g.ns)
				}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := g.tap1.Write(fr); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	})
}

// BenchmarkEgress measures what holding every packet a VM sends out
// against its egress policy costs: a 1-byte TCP round trip from a guest
// to a server outside, through the bridge, the forward chain and NAT,
//   - unfiltered: the forward chain emptied (the rules before egress
//     policies);
//   - default: a VM without an allow-list (its denied networks);
//   - learned: a VM with an allow-list reaching an address banger's DNS
//     gave it (every packet also restarts the address's timeout).
func BenchmarkEgress(b *testing.B) {
	s := newEgressSite(b)
	closed := s.e3
	closed.Egress = Egress{Closed: true}
	for _, c := range []struct {
		name string
		ep   Endpoint
	}{{"unfiltered", s.e3}, {"default", s.e3}, {"learned", closed}} {
		b.Run(c.name, func(b *testing.B) {
			if err := s.n.Apply([]Endpoint{c.ep}); err != nil {
				b.Fatal(err)
			}
			if c.ep.Egress.Closed {
				if err := s.n.Learn(c.ep.IP, "three", "web.test", []netip.Addr{netip.MustParseAddr("198.51.100.2")}, time.Minute); err != nil {
					b.Fatal(err)
				}
			}
			if c.name == "unfiltered" {
				if _, err := (system.Runner{}).Run(context.Background(), "ip", "netns", "exec", s.ns, "nft", "flush", "chain", "inet", TableName, "forward"); err != nil {
					b.Fatal(err)
				}
			}
			var conn net.Conn
			if err := InNetNS(s.g3, func() (err error) { conn, err = net.Dial("tcp", "198.51.100.2:7001"); return }); err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			buf := []byte{0}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := conn.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(conn, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
