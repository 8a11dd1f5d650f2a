package hostnet

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// This file is what banger's nftables rules are, as a pure function of
// the bridge's name and the live VMs: every rule carries both its
// expressions (what Apply sends over netlink) and its nft text (what
// `nft list ruleset` shows), built from the same small pieces, so that
// the table tests read like a ruleset and the namespace tests can hold
// the kernel's listing against the same text.

// AddrSet names the set in "bridge banger" that holds, for every live
// VM, its TAP, its MAC and its IPv4 address: the only source addresses
// that may enter the bridge from that TAP.
const AddrSet = "vm_addrs"

// Keys of the guard's rules.
const (
	keyOwnIPv4 = "IPv4 from the VM's own MAC and address"
	keyNotVM   = "not a VM's port"
	keyOwnARP  = "ARP from the VM's own MAC and address"
	keyForged  = "anything else from a VM: forged addresses, IPv6, VLAN tags, other protocols"
)

// chainSpec is one chain banger wants: base chains say their hook.
type chainSpec struct {
	chain  *nftables.Chain
	header string // the `type … hook …` line of a base chain, "" for a regular one
	// ordered: the chain's rules are a fixed sequence whose order is its
	// meaning (accepts before the final drop); Apply rewrites all of
	// them when they differ from it in any way.
	ordered bool
}

// ruleSpec is one rule banger wants: its chain, its key (the comment,
// which names the VM and what the rule is for), its nft text, and
// whether it goes before the chain's other rules.
type ruleSpec struct {
	chain *nftables.Chain
	key   string
	text  string
	exprs []expr.Any
	first bool
}

// setSpec is one named set banger wants, with its elements.
type setSpec struct {
	set *nftables.Set
	// header is the lines `nft list` shows between the set's type and
	// its elements (size, flags).
	header []string
	elems  []elemSpec
	// learned: the elements come from Learn, not from the ruleset, and
	// expire; Apply only removes those no VM may keep (keepLearned).
	learned bool
}

// elemSpec is one element of a set: for AddrSet one VM's TAP, MAC and
// address; for the egress sets a VM's address and a destination.
type elemSpec struct {
	key, keyEnd []byte // keyEnd: the last key of an interval, inclusive
	comment     string
	text        string
}

// id is what identifies an element in its set.
func (e elemSpec) id() string { return string(e.key) + "\x00" + string(e.keyEnd) }

// ruleset is everything banger wants in nftables for a set of VMs.
type ruleset struct {
	inet, bridge *nftables.Table
	sets         []*setSpec  // of both tables, in listing order
	chains       []chainSpec // inet's, then bridge's, in listing order
	addrs        *nftables.Set
	rules        []ruleSpec
	egress       egressSets
	// keepLearned says, for each VM whose egress is closed, which of
	// the names banger's DNS resolved for it it may still reach.
	keepLearned map[netip.Addr]func(name string) bool
}

// buildRuleset is banger's ruleset for the VMs eps on the bridge named
// bridge, whose address is the first of subnet. It checks each
// endpoint's TAP, MAC, address and egress, since a rule made of a bad
// one would either fail the whole transaction or let nothing through.
func buildRuleset(bridge string, subnet netip.Prefix, eps []Endpoint) (ruleset, error) {
	eps = append([]Endpoint(nil), eps...)
	sort.Slice(eps, func(i, j int) bool { return eps[i].TAP < eps[j].TAP })
	subnet = subnet.Masked()
	if !subnet.Addr().Is4() {
		return ruleset{}, fmt.Errorf("VM subnet %s is not IPv4", subnet)
	}
	var rs ruleset
	rs.inet = &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	rs.bridge = &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}
	post := &nftables.Chain{Name: "postrouting", Table: rs.inet, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource}
	// The guard runs at the bridge's prerouting hook: before the bridge
	// learns the frame's source MAC on its port, before it decides
	// between forwarding to another port and passing up to the host,
	// and before br_netfilter (priority 0), so a forged frame reaches
	// neither the host, nor another VM, nor the forwarding database.
	pre := &nftables.Chain{Name: "prerouting", Table: rs.bridge, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-200)}
	fwd := &nftables.Chain{Name: "forward", Table: rs.bridge, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter}
	shared := &nftables.Chain{Name: "shared", Table: rs.bridge}
	// Frames from a TAP that the bridge passes up to the host.
	up := &nftables.Chain{Name: "input", Table: rs.bridge, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityRef(-200)}
	egress := rs.egressChains(bridge, subnet)
	rs.chains = append([]chainSpec{
		{chain: post, header: "type nat hook postrouting priority srcnat; policy accept;"}},
		egress...)
	rs.chains = append(rs.chains,
		chainSpec{chain: pre, header: "type filter hook prerouting priority filter; policy accept;", ordered: true},
		chainSpec{chain: fwd, header: "type filter hook forward priority 0; policy accept;"},
		chainSpec{chain: shared},
		chainSpec{chain: up, header: "type filter hook input priority filter; policy accept;", ordered: true},
	)
	rs.addrs = &nftables.Set{Table: rs.bridge, Name: AddrSet, ID: 1, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr)}
	addrs := &setSpec{set: rs.addrs}
	rs.sets = append(rs.egress.specs(), addrs)

	for _, ep := range eps {
		if !strings.HasPrefix(ep.TAP, TAPPrefix) || len(ep.TAP) > 15 {
			return ruleset{}, fmt.Errorf("VM %q: TAP name %q: must start with %q and have at most 15 characters", ep.VM, ep.TAP, TAPPrefix)
		}
		if !ep.IP.Is4() {
			return ruleset{}, fmt.Errorf("VM %q: address %v is not IPv4: VM networks are IPv4 only", ep.VM, ep.IP)
		}
		if len(ep.MAC) != 6 || ep.MAC[0]&1 != 0 {
			return ruleset{}, fmt.Errorf("VM %q: MAC %q is not a unicast Ethernet address (hostnet.MAC gives one)", ep.VM, ep.MAC.String())
		}
		addrs.elems = append(addrs.elems, elemSpec{key: addrKey(ep.TAP, ep.MAC, ep.IP), comment: "vm " + ep.VM,
			text: fmt.Sprintf("%q . %s . %s", ep.TAP, ep.MAC, ep.IP)})
		if err := rs.addEgress(ep); err != nil {
			return ruleset{}, err
		}
		// ip saddr VM oifname != BRIDGE masquerade: traffic leaving
		// towards the outside, not replies on the bridge.
		rs.rules = append(rs.rules, rule(post, fmt.Sprintf("vm %s %s", ep.VM, ep.IP), false,
			ipSaddr(ep.IP), ifaceIs(expr.MetaKeyOIFNAME, false, bridge), masquerade()))
		if ep.Mode != Shared {
			continue
		}
		// Shared VMs reach each other: iifname TAP jump shared, and in
		// shared: oifname TAP accept. Everything else between banger
		// TAPs is dropped by the last rule. Traffic to and from the host
		// (the bridge's own address) is input/output, not forward.
		key := fmt.Sprintf("vm %s %s", ep.VM, ep.TAP)
		rs.rules = append(rs.rules,
			rule(fwd, key, true, ifaceIs(expr.MetaKeyIIFNAME, true, ep.TAP), verdict(expr.VerdictJump, shared.Name)),
			rule(shared, key, false, ifaceIs(expr.MetaKeyOIFNAME, true, ep.TAP), verdict(expr.VerdictAccept, "")))
	}
	// A frame from a TAP passes only with the VM's own source MAC and,
	// for IPv4, its own source address, or, for ARP, its own sender
	// addresses. Guests are configured statically from the kernel
	// command line (banger.ip=): no DHCP, so no 0.0.0.0 source; and
	// nothing of banger's network speaks IPv6, so a guest's IPv6 (its
	// link-local neighbour discovery included) is dropped with VLAN
	// tags and every other protocol rather than passed unchecked. The
	// common case, a VM's own IPv4, is the first rule: each rule a frame
	// passes through costs it time (BenchmarkGuard). Frames from ports
	// that are not banger's TAPs miss the set and pass by the second.
	// Before every VM's masquerade: a network it reaches directly sees
	// its own address (a cluster's pods see each other's).
	rs.rules = append(rs.rules, rule(post, "to networks VMs reach directly: their own address", true,
		pairIn(rs.egress.direct.set), verdict(expr.VerdictAccept, "")))
	rs.rules = append(rs.rules,
		rule(pre, keyOwnIPv4, false, ownIPv4(rs.addrs), verdict(expr.VerdictAccept, "")),
		rule(pre, keyNotVM, false, ifaceIs(expr.MetaKeyIIFNAME, false, TAPPrefix+"*"), verdict(expr.VerdictAccept, "")),
		rule(pre, keyOwnARP, false, ownARP(rs.addrs), verdict(expr.VerdictAccept, "")),
		rule(pre, keyForged, false, verdict(expr.VerdictDrop, "")),
		// iifname "bg-*" oifname "bg-*" drop: a prefix compare, as nft
		// compiles a trailing wildcard.
		rule(fwd, "isolate VMs", false, ifaceIs(expr.MetaKeyIIFNAME, true, TAPPrefix+"*"),
			ifaceIs(expr.MetaKeyOIFNAME, true, TAPPrefix+"*"), verdict(expr.VerdictDrop, "")),
		// A VM that sends a packet for another VM to the bridge's MAC
		// (a route via the gateway) would have the host route it back
		// onto the bridge, past the isolation above, which sees
		// bridged frames only; and with br_netfilter the inet table
		// cannot tell that routed packet from a bridged one. VMs meet
		// on the bridge or not at all.
		rule(up, keyHairpin, false, ifaceIs(expr.MetaKeyIIFNAME, true, TAPPrefix+"*"),
			bridgeIPDaddrIn(subnet), bridgeIPDaddrIs(false, subnet.Addr().Next()), verdict(expr.VerdictDrop, "")))
	return rs, nil
}

// String is the ruleset as an nft script, laid out as `nft list
// ruleset` lays it out (set elements sorted, one a line).
func (rs ruleset) String() string {
	var b strings.Builder
	for _, t := range []*nftables.Table{rs.inet, rs.bridge} {
		fmt.Fprintf(&b, "table %s %s {\n", familyName(t.Family), t.Name)
		first := true
		sep := func() {
			if !first {
				b.WriteString("\n")
			}
			first = false
		}
		for _, s := range rs.sets {
			if s.set.Table != t {
				continue
			}
			sep()
			fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", s.set.Name, s.set.KeyType.Name)
			for _, h := range s.header {
				fmt.Fprintf(&b, "\t\t%s\n", h)
			}
			elems := append([]elemSpec(nil), s.elems...)
			sort.Slice(elems, func(i, j int) bool { return elems[i].text < elems[j].text })
			for j, e := range elems {
				lead, end := "\t\t\t     ", ",\n"
				if j == 0 {
					lead = "\t\telements = { "
				}
				if j == len(elems)-1 {
					end = " }\n"
				}
				fmt.Fprintf(&b, "%s%s comment %q%s", lead, e.text, e.comment, end)
			}
			b.WriteString("\t}\n")
		}
		for _, c := range rs.chains {
			if c.chain.Table != t {
				continue
			}
			sep()
			fmt.Fprintf(&b, "\tchain %s {\n", c.chain.Name)
			if c.header != "" {
				fmt.Fprintf(&b, "\t\t%s\n", c.header)
			}
			for _, r := range rs.inOrder(c.chain) {
				fmt.Fprintf(&b, "\t\t%s comment %q\n", r.text, r.key)
			}
			b.WriteString("\t}\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// inOrder is the rules of chain c in the order they end up in: the
// ones that go first, then the others.
func (rs ruleset) inOrder(c *nftables.Chain) []ruleSpec {
	var head, tail []ruleSpec
	for _, r := range rs.rules {
		switch {
		case r.chain != c:
		case r.first:
			head = append(head, r)
		default:
			tail = append(tail, r)
		}
	}
	return append(head, tail...)
}

func familyName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyBridge {
		return "bridge"
	}
	return "inet"
}

// addrKey is an AddrSet element's key: each field padded to a multiple
// of 4 bytes, as concatenations are laid out in the kernel's registers.
func addrKey(tap string, mac net.HardwareAddr, ip netip.Addr) []byte {
	a := ip.As4()
	k := append(ifname(tap), mac...)
	return append(append(k, 0, 0), a[:]...)
}

// match is one piece of a rule: its nft text and its expressions.
type match struct {
	text  string
	exprs []expr.Any
}

func rule(c *nftables.Chain, key string, first bool, ms ...match) ruleSpec {
	r := ruleSpec{chain: c, key: key, first: first}
	var text []string
	for _, m := range ms {
		text = append(text, m.text)
		r.exprs = append(r.exprs, m.exprs...)
	}
	r.text = strings.Join(text, " ")
	return r
}

// Registers: nft_regs holds 16 32-bit registers from 8 on; a 16-byte
// interface name takes four, a MAC two (padded).
const (
	regIfname = 8  // 8..11
	regMAC    = 12 // 12..13
	regIP     = 14
)

// ifaceIs compares the input or output interface's name; a trailing
// "*" makes it a prefix compare, as nft compiles a wildcard.
func ifaceIs(key expr.MetaKey, eq bool, name string) match {
	word := map[expr.MetaKey]string{expr.MetaKeyIIFNAME: "iifname", expr.MetaKeyOIFNAME: "oifname"}[key]
	op, text := expr.CmpOpEq, fmt.Sprintf("%s %q", word, name)
	if !eq {
		op, text = expr.CmpOpNeq, fmt.Sprintf("%s != %q", word, name)
	}
	data := ifname(name)
	if p, ok := strings.CutSuffix(name, "*"); ok {
		data = []byte(p)
	}
	return match{text: text, exprs: []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}}
}

// ipSaddr matches an IPv4 source address in the inet family (nft
// prints the protocol check as part of `ip saddr`).
func ipSaddr(a netip.Addr) match {
	return match{text: "ip saddr " + a.String(), exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
	}}
}

// etherType checks the frame's EtherType as the bridge family sees it:
// a VLAN tag the kernel took off is put back in the loaded header, so a
// tagged frame has 0x8100 here, not its inner protocol.
func etherType(t uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(t >> 8), byte(t)}},
	}
}

// lookupAddrs looks the interface name and what loads loaded into the
// registers after it up in set.
func lookupAddrs(set *nftables.Set, loads ...expr.Any) []expr.Any {
	es := append([]expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regIfname}}, loads...)
	return append(es, &expr.Lookup{SourceRegister: regIfname, SetName: set.Name, SetID: set.ID})
}

// ownIPv4: an IPv4 packet whose Ethernet source and IP source are the
// input TAP's VM's.
func ownIPv4(set *nftables.Set) match {
	es := etherType(unix.ETH_P_IP)
	es = append(es, lookupAddrs(set,
		&expr.Payload{DestRegister: regMAC, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Payload{DestRegister: regIP, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4})...)
	return match{text: "iifname . ether saddr . ip saddr @" + set.Name, exprs: es}
}

// ownARP: an Ethernet/IPv4 ARP packet whose Ethernet source, sender
// MAC and sender address are the input TAP's VM's: two lookups, so
// both MACs must be the one the set holds for that TAP.
func ownARP(set *nftables.Set) match {
	es := etherType(unix.ETH_P_ARP)
	es = append(es,
		// htype 1, ptype 0x0800, hlen 6, plen 4: anything else would
		// put the sender fields elsewhere than where they are read.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 0, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 1, 8, 0}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 4, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{6, 4}})
	spa := func() expr.Any {
		return &expr.Payload{DestRegister: regIP, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4}
	}
	es = append(es, lookupAddrs(set,
		&expr.Payload{DestRegister: regMAC, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6}, spa())...)
	es = append(es, lookupAddrs(set,
		&expr.Payload{DestRegister: regMAC, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6}, spa())...)
	return match{text: "arp htype 1 arp ptype ip arp hlen 6 arp plen 4" +
		" iifname . ether saddr . arp saddr ip @" + set.Name +
		" iifname . arp saddr ether . arp saddr ip @" + set.Name, exprs: es}
}

func verdict(k expr.VerdictKind, chain string) match {
	text := map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictJump: "jump " + chain}[k]
	return match{text: text, exprs: []expr.Any{&expr.Verdict{Kind: k, Chain: chain}}}
}

func masquerade() match {
	return match{text: "masquerade", exprs: []expr.Any{&expr.Masq{}}}
}
