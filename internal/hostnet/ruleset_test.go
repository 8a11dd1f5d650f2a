package hostnet

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
)

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// guardRules is the guard chain every ruleset has, whatever the VMs.
const guardRules = `	chain prerouting {
		type filter hook prerouting priority filter; policy accept;
		iifname . ether saddr . ip saddr @vm_addrs accept comment "IPv4 from the VM's own MAC and address"
		iifname != "bg-*" accept comment "not a VM's port"
		arp htype 1 arp ptype ip arp hlen 6 arp plen 4 iifname . ether saddr . arp saddr ip @vm_addrs iifname . arp saddr ether . arp saddr ip @vm_addrs accept comment "ARP from the VM's own MAC and address"
		drop comment "anything else from a VM: forged addresses, IPv6, VLAN tags, other protocols"
	}
`

// egressChains are the inet chains every ruleset has, whatever the VMs:
// the host, what goes out, closed VMs and refusals.
const egressChains = `	chain input {
		type filter hook input priority filter; policy accept;
		iifname != "banger0" accept comment "not from a VM"
		ct state established,related accept comment "replies to the host's own connections (published ports)"
		ip daddr 10.253.0.1 udp dport 53 accept comment "banger's DNS"
		ip daddr 10.253.0.1 tcp dport 53 accept comment "banger's DNS over TCP"
		jump refuse comment "nothing else of the host"
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname != "banger0" accept comment "not from a VM"
		ct direction reply accept comment "replies to connections made to the VM"
		oifname "banger0" accept comment "between VMs: the bridge table decides"
		meta nfproto ipv6 drop comment "IPv6: VMs have IPv4 only"
		ip saddr . ip daddr @egress_deny jump refuse comment "denied"
		ip saddr @egress_closed jump closed comment "allow-list: only what it lists"
	}

	chain closed {
		udp dport 53 jump refuse comment "DNS only through banger's"
		tcp dport 53 jump refuse comment "DNS over TCP only through banger's"
		udp dport 853 jump refuse comment "DNS over QUIC only through banger's"
		tcp dport 853 jump refuse comment "DNS over TLS only through banger's"
		ip saddr . ip daddr @egress_allow accept comment "allowed networks"
		ip saddr . ip daddr @egress_dns update @egress_dns { ip saddr . ip daddr timeout 10m } accept comment "allowed names, as banger's DNS answered them; each packet keeps them"
		jump refuse comment "nothing else"
	}

	chain refuse {
		meta l4proto tcp reject with tcp reset comment "TCP: a reset"
		reject with icmpx admin-prohibited comment "the rest: administratively prohibited"
	}
`

// hairpin is the bridge's input chain, whatever the VMs.
const hairpin = `	chain input {
		type filter hook input priority filter; policy accept;
		iifname "bg-*" ip daddr 10.253.0.0/24 ip daddr != 10.253.0.1 drop comment "to another VM through the host: VMs meet on the bridge only"
	}
`

// egressSetsText lists the egress sets with the elements of allow, deny,
// closed and direct (one element a line, as nft lists them).
func egressSetsText(allow, deny, closed, direct []string) string {
	list := func(elems []string) string {
		if len(elems) == 0 {
			return ""
		}
		return "\t\telements = { " + strings.Join(elems, ",\n\t\t\t     ") + " }\n"
	}
	return "\tset egress_allow {\n\t\ttype ipv4_addr . ipv4_addr\n\t\tflags interval\n" + list(allow) + "\t}\n\n" +
		"\tset egress_deny {\n\t\ttype ipv4_addr . ipv4_addr\n\t\tflags interval\n" + list(deny) + "\t}\n\n" +
		"\tset egress_closed {\n\t\ttype ipv4_addr\n" + list(closed) + "\t}\n\n" +
		"\tset egress_dns {\n\t\ttype ipv4_addr . ipv4_addr\n\t\tsize 262144\n\t\tflags dynamic,timeout\n\t}\n\n" +
		"\tset egress_direct {\n\t\ttype ipv4_addr . ipv4_addr\n\t\tflags interval\n" + list(direct) + "\t}\n"
}

// defaultDenied are the deny elements of a VM without an allow-list.
func defaultDenied(vm, ip string) []string {
	var out []string
	for _, p := range []string{"10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"} {
		out = append(out, fmt.Sprintf("%s . %s comment \"vm %s: default\"", ip, p, vm))
	}
	return out
}

func TestBuildRuleset(t *testing.T) {
	one := Endpoint{VM: "web", TAP: "bg-0a1b2c3d4e5f", MAC: mac("02:b9:11:22:33:44"), IP: netip.MustParseAddr("10.253.0.2"), Mode: NAT}
	pfx := netip.MustParsePrefix
	for _, c := range []struct {
		name string
		eps  []Endpoint
		want string
	}{{
		name: "one NAT VM, default policy",
		eps:  []Endpoint{one},
		want: `table inet banger {
` + egressSetsText(nil, defaultDenied("web", "10.253.0.2"), nil, nil) + `
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr . ip daddr @egress_direct accept comment "to networks VMs reach directly: their own address"
		ip saddr 10.253.0.2 oifname != "banger0" masquerade comment "vm web 10.253.0.2"
	}

` + egressChains + `}
table bridge banger {
	set vm_addrs {
		type ifname . ether_addr . ipv4_addr
		elements = { "bg-0a1b2c3d4e5f" . 02:b9:11:22:33:44 . 10.253.0.2 comment "vm web" }
	}

` + guardRules + `
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname "bg-*" oifname "bg-*" drop comment "isolate VMs"
	}

	chain shared {
	}

` + hairpin + `}
`,
	}, {
		// The three examples of the egress design: the default, an
		// allow-list (its names are not rules: they come through
		// banger's DNS into egress_dns, which starts empty) with an
		// address and a network, and deny-out on top of the default
		// (10.1.0.0/16 is inside the default's 10.0.0.0/8: merged).
		name: "default, allow-list and deny-out VMs",
		eps: []Endpoint{
			one,
			{VM: "api", TAP: "bg-1a1b2c3d4e5f", MAC: mac("02:b9:11:22:33:45"), IP: netip.MustParseAddr("10.253.0.3"), Mode: NAT,
				Egress: Egress{Closed: true, Allow: []netip.Prefix{pfx("203.0.113.0/24"), pfx("10.99.0.5/32"), pfx("203.0.113.7/32")}}},
			{VM: "ci", TAP: "bg-2a1b2c3d4e5f", MAC: mac("02:b9:11:22:33:46"), IP: netip.MustParseAddr("10.253.0.4"), Mode: NAT,
				Egress: Egress{Deny: []netip.Prefix{pfx("198.51.100.0/24"), pfx("10.1.0.0/16")}}},
		},
		want: `table inet banger {
	set egress_allow {
		type ipv4_addr . ipv4_addr
		flags interval
		elements = { 10.253.0.3 . 10.99.0.5 comment "vm api",
			     10.253.0.3 . 203.0.113.0/24 comment "vm api" }
	}

	set egress_deny {
		type ipv4_addr . ipv4_addr
		flags interval
		elements = { 10.253.0.2 . 10.0.0.0/8 comment "vm web: default",
			     10.253.0.2 . 100.64.0.0/10 comment "vm web: default",
			     10.253.0.2 . 169.254.0.0/16 comment "vm web: default",
			     10.253.0.2 . 172.16.0.0/12 comment "vm web: default",
			     10.253.0.2 . 192.168.0.0/16 comment "vm web: default",
			     10.253.0.4 . 10.0.0.0/8 comment "vm ci: default",
			     10.253.0.4 . 100.64.0.0/10 comment "vm ci: default",
			     10.253.0.4 . 169.254.0.0/16 comment "vm ci: default",
			     10.253.0.4 . 172.16.0.0/12 comment "vm ci: default",
			     10.253.0.4 . 192.168.0.0/16 comment "vm ci: default",
			     10.253.0.4 . 198.51.100.0/24 comment "vm ci" }
	}

	set egress_closed {
		type ipv4_addr
		elements = { 10.253.0.3 comment "vm api" }
	}

	set egress_dns {
		type ipv4_addr . ipv4_addr
		size 262144
		flags dynamic,timeout
	}

	set egress_direct {
		type ipv4_addr . ipv4_addr
		flags interval
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr . ip daddr @egress_direct accept comment "to networks VMs reach directly: their own address"
		ip saddr 10.253.0.2 oifname != "banger0" masquerade comment "vm web 10.253.0.2"
		ip saddr 10.253.0.3 oifname != "banger0" masquerade comment "vm api 10.253.0.3"
		ip saddr 10.253.0.4 oifname != "banger0" masquerade comment "vm ci 10.253.0.4"
	}

` + egressChains + `}
table bridge banger {
	set vm_addrs {
		type ifname . ether_addr . ipv4_addr
		elements = { "bg-0a1b2c3d4e5f" . 02:b9:11:22:33:44 . 10.253.0.2 comment "vm web",
			     "bg-1a1b2c3d4e5f" . 02:b9:11:22:33:45 . 10.253.0.3 comment "vm api",
			     "bg-2a1b2c3d4e5f" . 02:b9:11:22:33:46 . 10.253.0.4 comment "vm ci" }
	}

` + guardRules + `
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname "bg-*" oifname "bg-*" drop comment "isolate VMs"
	}

	chain shared {
	}

` + hairpin + `}
`,
	}, {
		// A pod's VM: the cluster's pod network is direct, so it
		// leaves the default's 10.0.0.0/8 as the halves that do not
		// hold it, and is in egress_direct (not masqueraded); a closed
		// VM with the same network direct has it allowed.
		name: "direct networks: a pod's VM",
		eps: []Endpoint{
			{VM: "pod", TAP: "bg-p1", MAC: mac("02:00:00:00:00:21"), IP: netip.MustParseAddr("10.253.0.21"), Mode: Shared,
				Egress: Egress{Direct: []netip.Prefix{pfx("10.244.0.0/16")}}},
			{VM: "tight", TAP: "bg-p2", MAC: mac("02:00:00:00:00:22"), IP: netip.MustParseAddr("10.253.0.22"), Mode: Shared,
				Egress: Egress{Closed: true, Allow: []netip.Prefix{pfx("203.0.113.0/24")}, Direct: []netip.Prefix{pfx("10.244.0.0/16")}}},
		},
		want: `table inet banger {
` + egressSetsText([]string{
			`10.253.0.22 . 10.244.0.0/16 comment "vm tight"`,
			`10.253.0.22 . 203.0.113.0/24 comment "vm tight"`,
		}, []string{
			`10.253.0.21 . 10.0.0.0/9 comment "vm pod: default"`,
			`10.253.0.21 . 10.128.0.0/10 comment "vm pod: default"`,
			`10.253.0.21 . 10.192.0.0/11 comment "vm pod: default"`,
			`10.253.0.21 . 10.224.0.0/12 comment "vm pod: default"`,
			`10.253.0.21 . 10.240.0.0/14 comment "vm pod: default"`,
			`10.253.0.21 . 10.245.0.0/16 comment "vm pod: default"`,
			`10.253.0.21 . 10.246.0.0/15 comment "vm pod: default"`,
			`10.253.0.21 . 10.248.0.0/13 comment "vm pod: default"`,
			`10.253.0.21 . 100.64.0.0/10 comment "vm pod: default"`,
			`10.253.0.21 . 169.254.0.0/16 comment "vm pod: default"`,
			`10.253.0.21 . 172.16.0.0/12 comment "vm pod: default"`,
			`10.253.0.21 . 192.168.0.0/16 comment "vm pod: default"`,
		}, []string{`10.253.0.22 comment "vm tight"`}, []string{
			`10.253.0.21 . 10.244.0.0/16 comment "vm pod"`,
			`10.253.0.22 . 10.244.0.0/16 comment "vm tight"`,
		}) + `
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr . ip daddr @egress_direct accept comment "to networks VMs reach directly: their own address"
		ip saddr 10.253.0.21 oifname != "banger0" masquerade comment "vm pod 10.253.0.21"
		ip saddr 10.253.0.22 oifname != "banger0" masquerade comment "vm tight 10.253.0.22"
	}

` + egressChains + `}
table bridge banger {
	set vm_addrs {
		type ifname . ether_addr . ipv4_addr
		elements = { "bg-p1" . 02:00:00:00:00:21 . 10.253.0.21 comment "vm pod",
			     "bg-p2" . 02:00:00:00:00:22 . 10.253.0.22 comment "vm tight" }
	}

` + guardRules + `
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname "bg-p1" jump shared comment "vm pod bg-p1"
		iifname "bg-p2" jump shared comment "vm tight bg-p2"
		iifname "bg-*" oifname "bg-*" drop comment "isolate VMs"
	}

	chain shared {
		oifname "bg-p1" accept comment "vm pod bg-p1"
		oifname "bg-p2" accept comment "vm tight bg-p2"
	}

` + hairpin + `}
`,
	}, {
		name: "shared and NAT VMs, sorted by TAP",
		eps: []Endpoint{
			{VM: "three", TAP: "bg-g3", MAC: mac("02:00:00:00:00:13"), IP: netip.MustParseAddr("10.253.0.13"), Mode: NAT},
			{VM: "two", TAP: "bg-g2", MAC: mac("02:00:00:00:00:12"), IP: netip.MustParseAddr("10.253.0.12"), Mode: Shared},
			{VM: "one", TAP: "bg-g1", MAC: mac("02:00:00:00:00:11"), IP: netip.MustParseAddr("10.253.0.11"), Mode: Shared},
		},
		want: `table inet banger {
` + egressSetsText(nil, slices.Concat(defaultDenied("one", "10.253.0.11"), defaultDenied("two", "10.253.0.12"), defaultDenied("three", "10.253.0.13")), nil, nil) + `
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr . ip daddr @egress_direct accept comment "to networks VMs reach directly: their own address"
		ip saddr 10.253.0.11 oifname != "banger0" masquerade comment "vm one 10.253.0.11"
		ip saddr 10.253.0.12 oifname != "banger0" masquerade comment "vm two 10.253.0.12"
		ip saddr 10.253.0.13 oifname != "banger0" masquerade comment "vm three 10.253.0.13"
	}

` + egressChains + `}
table bridge banger {
	set vm_addrs {
		type ifname . ether_addr . ipv4_addr
		elements = { "bg-g1" . 02:00:00:00:00:11 . 10.253.0.11 comment "vm one",
			     "bg-g2" . 02:00:00:00:00:12 . 10.253.0.12 comment "vm two",
			     "bg-g3" . 02:00:00:00:00:13 . 10.253.0.13 comment "vm three" }
	}

` + guardRules + `
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname "bg-g1" jump shared comment "vm one bg-g1"
		iifname "bg-g2" jump shared comment "vm two bg-g2"
		iifname "bg-*" oifname "bg-*" drop comment "isolate VMs"
	}

	chain shared {
		oifname "bg-g1" accept comment "vm one bg-g1"
		oifname "bg-g2" accept comment "vm two bg-g2"
	}

` + hairpin + `}
`,
	}} {
		t.Run(c.name, func(t *testing.T) {
			rs, err := buildRuleset(DefaultBridge, netip.MustParsePrefix(DefaultSubnet), c.eps)
			if err != nil {
				t.Fatal(err)
			}
			if got := rs.String(); got != c.want {
				t.Errorf("ruleset:\n%s\nwant:\n%s", got, c.want)
			}
		})
	}
}

// TestEgressElements pins the keys of the egress sets: the VM's address,
// then the first and (key end, inclusive) last address of a network, as
// the kernel's interval sets of concatenations take them.
func TestEgressElements(t *testing.T) {
	vm := netip.MustParseAddr("10.253.0.3")
	for _, c := range []struct {
		p          string
		start, end string
		text       string
	}{
		{"203.0.113.0/24", "0afd0003cb007100", "0afd0003cb0071ff", "10.253.0.3 . 203.0.113.0/24"},
		{"10.99.0.5/32", "0afd00030a630005", "0afd00030a630005", "10.253.0.3 . 10.99.0.5"},
		{"0.0.0.0/0", "0afd000300000000", "0afd0003ffffffff", "10.253.0.3 . 0.0.0.0/0"},
		{"172.16.0.0/12", "0afd0003ac100000", "0afd0003ac1fffff", "10.253.0.3 . 172.16.0.0/12"},
	} {
		e := pairElem(vm, netip.MustParsePrefix(c.p), "vm x")
		if got := fmt.Sprintf("%x-%x %s", e.key, e.keyEnd, e.text); got != c.start+"-"+c.end+" "+c.text {
			t.Errorf("%s: %s", c.p, got)
		}
	}
}

func TestMerge(t *testing.T) {
	var ps []netip.Prefix
	for _, s := range []string{"10.1.0.0/16", "10.0.0.0/8", "192.0.2.1/32", "192.0.2.0/24", "198.51.100.0/24", "10.1.2.3/32"} {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	if got := fmt.Sprint(merge(ps)); got != "[10.0.0.0/8 192.0.2.0/24 198.51.100.0/24]" {
		t.Errorf("merge = %s", got)
	}
}

func TestStaleLearned(t *testing.T) {
	key := func(vm, dst string) []byte {
		return append(netip.MustParseAddr(vm).AsSlice(), netip.MustParseAddr(dst).AsSlice()...)
	}
	have := []nftables.SetElement{
		{Key: key("10.253.0.3", "198.51.100.2"), Comment: "vm api: web.test"},
		{Key: key("10.253.0.3", "198.51.100.3"), Comment: "vm api: other.test"},
		{Key: key("10.253.0.4", "198.51.100.2"), Comment: "vm open: web.test"}, // its egress is no longer closed
		{Key: key("10.253.0.9", "198.51.100.2"), Comment: "vm gone: web.test"}, // no such VM
		{Key: key("10.253.0.5", "198.51.100.2"), Comment: "vm all: web.test"},
	}
	keep := map[netip.Addr]func(string) bool{
		netip.MustParseAddr("10.253.0.3"): func(n string) bool { return n == "web.test" },
		netip.MustParseAddr("10.253.0.5"): func(string) bool { return true },
	}
	var got []string
	for _, e := range staleLearned(have, keep) {
		got = append(got, fmt.Sprintf("%x", e.Key))
	}
	want := []string{"0afd0003c6336403", "0afd0004c6336402", "0afd0009c6336402"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("stale = %v, want %v", got, want)
	}
}

// TestAddrKey pins the element layout: each field of the concatenation
// padded to 4 bytes (ifname 16, MAC 6+2, IPv4 4), as the kernel
// compares the registers the guard's lookups load.
func TestAddrKey(t *testing.T) {
	k := addrKey("bg-1", mac("02:b9:00:00:00:01"), netip.MustParseAddr("10.253.0.2"))
	want := append([]byte("bg-1"), make([]byte, 12)...)
	want = append(want, 0x02, 0xb9, 0, 0, 0, 1, 0, 0, 10, 253, 0, 2)
	if string(k) != string(want) {
		t.Errorf("key % x, want % x", k, want)
	}
}

func TestBuildRulesetRefusesBadEndpoints(t *testing.T) {
	good := Endpoint{VM: "v", TAP: "bg-x", MAC: mac("02:00:00:00:00:01"), IP: netip.MustParseAddr("10.253.0.2")}
	for _, c := range []struct {
		name string
		edit func(*Endpoint)
		want string
	}{
		{"no MAC", func(e *Endpoint) { e.MAC = nil }, "not a unicast Ethernet address"},
		{"multicast MAC", func(e *Endpoint) { e.MAC = mac("01:00:5e:00:00:01") }, "not a unicast Ethernet address"},
		{"long MAC", func(e *Endpoint) { e.MAC = mac("02:00:00:00:00:00:00:01") }, "not a unicast Ethernet address"},
		{"IPv6 address", func(e *Endpoint) { e.IP = netip.MustParseAddr("fd00::2") }, "not IPv4"},
		{"no address", func(e *Endpoint) { e.IP = netip.Addr{} }, "not IPv4"},
		{"not a banger TAP", func(e *Endpoint) { e.TAP = "eth0" }, "must start with"},
		{"TAP name too long", func(e *Endpoint) { e.TAP = "bg-0123456789abc" }, "at most 15"},
		{"IPv6 network allowed", func(e *Endpoint) {
			e.Egress = Egress{Closed: true, Allow: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}}
		}, "allowed network 2001:db8::/32 is not IPv4"},
		{"IPv6 network denied", func(e *Endpoint) { e.Egress.Deny = []netip.Prefix{netip.MustParsePrefix("::/0")} }, "denied network ::/0 is not IPv4"},
		{"no network", func(e *Endpoint) { e.Egress.Deny = []netip.Prefix{{}} }, "is not IPv4"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ep := good
			c.edit(&ep)
			_, err := buildRuleset(DefaultBridge, netip.MustParsePrefix(DefaultSubnet), []Endpoint{ep})
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), `VM "v"`) {
				t.Errorf("error = %v, want one naming the VM and saying %q", err, c.want)
			}
		})
	}
}

func TestNeighbourChanges(t *testing.T) {
	a, b, c := netip.MustParseAddr("10.253.0.2"), netip.MustParseAddr("10.253.0.3"), netip.MustParseAddr("10.253.0.4")
	m1, m2 := mac("02:00:00:00:00:01"), mac("02:00:00:00:00:02")
	str := func(ns []neighbour) string {
		var s []string
		for _, n := range ns {
			s = append(s, n.IP.String()+"="+n.MAC.String())
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct {
		name           string
		have, want     []neighbour
		wantDel, wantS string
	}{
		{"nothing", nil, nil, "", ""},
		{"first VM", nil, []neighbour{{a, m1}}, "", "10.253.0.2=02:00:00:00:00:01"},
		{"in place", []neighbour{{a, m1}}, []neighbour{{a, m1}}, "", ""},
		{"VM gone", []neighbour{{a, m1}, {b, m2}}, []neighbour{{a, m1}}, "10.253.0.3=02:00:00:00:00:02", ""},
		{"last VM gone", []neighbour{{a, m1}}, nil, "10.253.0.2=02:00:00:00:00:01", ""},
		{"address now another VM's: replaced, not deleted", []neighbour{{a, m1}}, []neighbour{{a, m2}}, "", "10.253.0.2=02:00:00:00:00:02"},
		{"sorted", nil, []neighbour{{c, m1}, {a, m2}}, "", "10.253.0.2=02:00:00:00:00:02 10.253.0.4=02:00:00:00:00:01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			del, set := neighbourChanges(tc.have, tc.want)
			if str(del) != tc.wantDel || str(set) != tc.wantS {
				t.Errorf("delete [%s] set [%s], want delete [%s] set [%s]", str(del), str(set), tc.wantDel, tc.wantS)
			}
		})
	}
}
