package hostnet

import (
	"net"
	"net/netip"
	"strings"
	"testing"
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

func TestBuildRuleset(t *testing.T) {
	one := Endpoint{VM: "web", TAP: "bg-0a1b2c3d4e5f", MAC: mac("02:b9:11:22:33:44"), IP: netip.MustParseAddr("10.253.0.2"), Mode: NAT}
	for _, c := range []struct {
		name string
		eps  []Endpoint
		want string
	}{{
		name: "one NAT VM",
		eps:  []Endpoint{one},
		want: `table inet banger {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.253.0.2 oifname != "banger0" masquerade comment "vm web 10.253.0.2"
	}
}
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
}
`,
	}, {
		name: "shared and NAT VMs, sorted by TAP",
		eps: []Endpoint{
			{VM: "three", TAP: "bg-g3", MAC: mac("02:00:00:00:00:13"), IP: netip.MustParseAddr("10.253.0.13"), Mode: NAT},
			{VM: "two", TAP: "bg-g2", MAC: mac("02:00:00:00:00:12"), IP: netip.MustParseAddr("10.253.0.12"), Mode: Shared},
			{VM: "one", TAP: "bg-g1", MAC: mac("02:00:00:00:00:11"), IP: netip.MustParseAddr("10.253.0.11"), Mode: Shared},
		},
		want: `table inet banger {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.253.0.11 oifname != "banger0" masquerade comment "vm one 10.253.0.11"
		ip saddr 10.253.0.12 oifname != "banger0" masquerade comment "vm two 10.253.0.12"
		ip saddr 10.253.0.13 oifname != "banger0" masquerade comment "vm three 10.253.0.13"
	}
}
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
}
`,
	}} {
		t.Run(c.name, func(t *testing.T) {
			rs, err := buildRuleset(DefaultBridge, c.eps)
			if err != nil {
				t.Fatal(err)
			}
			if got := rs.String(); got != c.want {
				t.Errorf("ruleset:\n%s\nwant:\n%s", got, c.want)
			}
		})
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
	} {
		t.Run(c.name, func(t *testing.T) {
			ep := good
			c.edit(&ep)
			_, err := buildRuleset(DefaultBridge, []Endpoint{ep})
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
