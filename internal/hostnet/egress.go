package hostnet

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// This file is the egress part of the ruleset: what a VM may reach
// beyond the bridge (the inet table's forward chain) and of the host
// itself (its input chain). The chains are the same whatever the VMs;
// each VM's policy is elements of four sets keyed by the VM's address,
// so that starting a VM or changing its policy adds and removes set
// elements and never a rule (deleting a rule costs the kernel an RCU
// grace period, ~10 ms).
//
// Every packet a VM sends out is held against the sets, not only a
// connection's first: a changed policy cuts open connections at their
// next packet, TCP with a reset and the rest with an ICMP
// administratively-prohibited, without conntrack tools.

// The egress sets in "inet banger", each keyed by the VM's address
// (first) and, but for ClosedSet, a destination.
const (
	// AllowSet: networks and addresses a VM whose egress is closed
	// may reach (interval set).
	AllowSet = "egress_allow"
	// DenySet: networks no VM may reach (interval set): its DenyOut
	// and, unless its egress is closed, DefaultDenied.
	DenySet = "egress_deny"
	// ClosedSet: the VMs whose egress is closed: given an allow-list,
	// they reach nothing else.
	ClosedSet = "egress_closed"
	// LearnedSet: addresses banger's DNS server answered a closed VM
	// for a name it may resolve (timeouts; see Learn).
	LearnedSet = "egress_dns"
	// DirectSet: networks a VM reaches with its own address, not
	// masqueraded (interval set; see Egress.Direct).
	DirectSet = "egress_direct"
)

// LearnedIdle is how long an address banger's DNS gave a VM stays
// reachable after the VM's last packet to it: every packet refreshes
// it, so an open connection lives as long as it is used, however short
// the name's TTL. Learn's timeouts must not exceed it (a refresh would
// shorten them).
const LearnedIdle = 10 * time.Minute

// LearnedMax bounds the learned set, which all VMs share: room for
// LearnedPerVM addresses of each of a /24's VMs. vmnet holds each VM to
// LearnedPerVM, so that one resolving names in a loop fills its own
// share and not the others'.
const (
	LearnedPerVM = 1024
	LearnedMax   = 1 << 18
)

// DefaultDenied are the IPv4 networks a VM without an allow-list never
// reaches: link-local (cloud metadata servers), the private ranges (the
// host's LAN, other VMs through the host) and shared address space
// (carrier-grade NAT). An allow-list may name addresses in them.
var DefaultDenied = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
}

// Egress is what a VM may reach beyond the bridge, as rules see it
// (vmnet.Policy is the user's form, with names). The zero value is the
// default: everything but DefaultDenied. A VM never reaches the host
// but for banger's DNS, nor IPv6, whatever its Egress.
type Egress struct {
	// Closed: the VM reaches only Allow and what banger's DNS resolved
	// for it (Learn), and DNS only through banger's server.
	Closed bool
	// Allow: IPv4 networks a closed VM may reach. Deny: IPv4 networks
	// the VM may not reach, before anything else.
	Allow, Deny []netip.Prefix
	// KeepLearned says which addresses Learn added for a closed VM
	// stay, by the name they were learned for: Apply removes the
	// others, so that a changed policy cuts them at once. nil keeps
	// them all.
	KeepLearned func(name string) bool
	// Direct: IPv4 networks the VM reaches with its own address (no
	// masquerade), even inside DefaultDenied and even when Closed: a
	// Kubernetes cluster's pod network, where every pod must see the
	// others' own addresses. Deny still wins.
	Direct []netip.Prefix
}

// Keys of the egress rules.
const (
	keyNotVM6  = "IPv6: VMs have IPv4 only"
	keyHairpin = "to another VM through the host: VMs meet on the bridge only"
)

// egressSets are the egress sets of one ruleset.
type egressSets struct {
	allow, deny, closed, learned, direct *setSpec
}

func (es egressSets) specs() []*setSpec {
	return []*setSpec{es.allow, es.deny, es.closed, es.learned, es.direct}
}

// egressChains makes the egress sets and returns the inet chains that
// use them (input, forward, closed, refuse), with their rules.
func (rs *ruleset) egressChains(bridge string, subnet netip.Prefix) []chainSpec {
	pair := nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr)
	rs.egress = egressSets{
		allow: &setSpec{set: &nftables.Set{Table: rs.inet, Name: AllowSet, ID: 2, KeyType: pair, Concatenation: true, Interval: true},
			header: []string{"flags interval"}},
		deny: &setSpec{set: &nftables.Set{Table: rs.inet, Name: DenySet, ID: 3, KeyType: pair, Concatenation: true, Interval: true},
			header: []string{"flags interval"}},
		closed: &setSpec{set: &nftables.Set{Table: rs.inet, Name: ClosedSet, ID: 4, KeyType: nftables.TypeIPAddr}},
		learned: &setSpec{set: &nftables.Set{Table: rs.inet, Name: LearnedSet, ID: 5, KeyType: pair, Concatenation: true,
			HasTimeout: true, Dynamic: true, Size: LearnedMax},
			header: []string{fmt.Sprintf("size %d", LearnedMax), "flags dynamic,timeout"}, learned: true},
		direct: &setSpec{set: &nftables.Set{Table: rs.inet, Name: DirectSet, ID: 6, KeyType: pair, Concatenation: true, Interval: true},
			header: []string{"flags interval"}},
	}
	rs.keepLearned = map[netip.Addr]func(string) bool{}
	es := rs.egress
	filter := func(name string, hook *nftables.ChainHook) *nftables.Chain {
		return &nftables.Chain{Name: name, Table: rs.inet, Type: nftables.ChainTypeFilter, Hooknum: hook, Priority: nftables.ChainPriorityFilter}
	}
	in := filter("input", nftables.ChainHookInput)
	fwd := filter("forward", nftables.ChainHookForward)
	closed := &nftables.Chain{Name: "closed", Table: rs.inet}
	refuse := &nftables.Chain{Name: "refuse", Table: rs.inet}
	gw := subnet.Addr().Next()
	fromVM := ifaceIs(expr.MetaKeyIIFNAME, false, bridge)
	toRefuse := verdict(expr.VerdictJump, refuse.Name)
	accept := verdict(expr.VerdictAccept, "")
	rs.rules = append(rs.rules,
		// The host: banger's DNS server on the bridge address, and the
		// replies to what the host opened to a VM (published ports
		// are a proxy in bangerd that connects to the guest); nothing
		// else, on any of the host's addresses.
		rule(in, "not from a VM", false, fromVM, accept),
		rule(in, "replies to the host's own connections (published ports)", false, ctEstablished(), accept),
		rule(in, "banger's DNS", false, ipDaddr(gw), l4Port(unix.IPPROTO_UDP, 53), accept),
		rule(in, "banger's DNS over TCP", false, ipDaddr(gw), l4Port(unix.IPPROTO_TCP, 53), accept),
		rule(in, "nothing else of the host", false, toRefuse),

		rule(fwd, "not from a VM", false, fromVM, accept),
		// A VM answers whoever reached it: a pod's clients on other
		// nodes (Kubernetes), a LAN host routed to it. Only replies:
		// what the VM itself opens is held to its policy, packet by
		// packet.
		rule(fwd, "replies to connections made to the VM", false, ctReply(), accept),
		// Bridged frames between VMs meet the inet hooks only with
		// br_netfilter (in and out the bridge): the bridge table
		// decides about them, and drops packets routed back onto the
		// bridge (keyHairpin), which look the same here.
		rule(fwd, "between VMs: the bridge table decides", false, ifaceIs(expr.MetaKeyOIFNAME, true, bridge), accept),
		rule(fwd, keyNotVM6, false, nfproto(unix.NFPROTO_IPV6), verdict(expr.VerdictDrop, "")),
		rule(fwd, "denied", false, pairIn(es.deny.set), toRefuse),
		rule(fwd, "allow-list: only what it lists", false, saddrIn(es.closed.set), verdict(expr.VerdictJump, closed.Name)),

		// A closed VM resolves names through banger's DNS server only
		// (the host, so not this chain): another resolver, or one
		// over TLS or QUIC, would answer names its policy does not
		// allow, and carry data out in the questions.
		rule(closed, "DNS only through banger's", false, l4Port(unix.IPPROTO_UDP, 53), toRefuse),
		rule(closed, "DNS over TCP only through banger's", false, l4Port(unix.IPPROTO_TCP, 53), toRefuse),
		rule(closed, "DNS over QUIC only through banger's", false, l4Port(unix.IPPROTO_UDP, 853), toRefuse),
		rule(closed, "DNS over TLS only through banger's", false, l4Port(unix.IPPROTO_TCP, 853), toRefuse),
		rule(closed, "allowed networks", false, pairIn(es.allow.set), accept),
		rule(closed, "allowed names, as banger's DNS answered them; each packet keeps them", false,
			pairIn(es.learned.set), refresh(es.learned.set, LearnedIdle), accept),
		rule(closed, "nothing else", false, toRefuse),

		rule(refuse, "TCP: a reset", false, l4proto(unix.IPPROTO_TCP), reject(unix.NFT_REJECT_TCP_RST, 0, "reject with tcp reset")),
		rule(refuse, "the rest: administratively prohibited", false,
			reject(unix.NFT_REJECT_ICMPX_UNREACH, unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED, "reject with icmpx admin-prohibited")),
	)
	return []chainSpec{
		{chain: in, header: "type filter hook input priority filter; policy accept;", ordered: true},
		{chain: fwd, header: "type filter hook forward priority filter; policy accept;", ordered: true},
		{chain: closed, ordered: true},
		{chain: refuse, ordered: true},
	}
}

// addEgress adds ep's elements to the egress sets.
func (rs *ruleset) addEgress(ep Endpoint) error {
	eg := ep.Egress
	allow, err := ipv4Prefixes(eg.Allow)
	if err != nil {
		return fmt.Errorf("VM %q: allowed network %w", ep.VM, err)
	}
	deny, err := ipv4Prefixes(eg.Deny)
	if err != nil {
		return fmt.Errorf("VM %q: denied network %w", ep.VM, err)
	}
	direct, err := ipv4Prefixes(eg.Direct)
	if err != nil {
		return fmt.Errorf("VM %q: direct network %w", ep.VM, err)
	}
	direct = merge(direct)
	vm := "vm " + ep.VM
	for _, p := range direct {
		rs.egress.direct.elems = append(rs.egress.direct.elems, pairElem(ep.IP, p, vm))
	}
	comments := map[netip.Prefix]string{}
	for _, p := range deny {
		comments[p] = vm
	}
	if eg.Closed {
		allow = append(allow, direct...)
		rs.egress.closed.elems = append(rs.egress.closed.elems, elemSpec{key: ep.IP.AsSlice(), comment: vm, text: ep.IP.String()})
		rs.keepLearned[ep.IP] = eg.KeepLearned
		if eg.KeepLearned == nil {
			rs.keepLearned[ep.IP] = func(string) bool { return true }
		}
		for _, p := range merge(allow) {
			rs.egress.allow.elems = append(rs.egress.allow.elems, pairElem(ep.IP, p, vm))
		}
	} else {
		for _, p := range subtract(DefaultDenied, direct) {
			if _, ok := comments[p]; !ok {
				comments[p] = vm + ": default"
				deny = append(deny, p)
			}
		}
	}
	for _, p := range merge(deny) {
		rs.egress.deny.elems = append(rs.egress.deny.elems, pairElem(ep.IP, p, comments[p]))
	}
	return nil
}

// ipv4Prefixes checks that ps are IPv4 networks and returns them masked.
func ipv4Prefixes(ps []netip.Prefix) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if !p.IsValid() || !p.Addr().Is4() {
			return nil, fmt.Errorf("%s is not IPv4: VM networks are IPv4 only", p)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// merge drops the networks another one of ps holds: the elements of an
// interval set may not overlap, and two networks either nest or are
// disjoint.
func merge(ps []netip.Prefix) []netip.Prefix {
	ps = append([]netip.Prefix(nil), ps...)
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].Bits() != ps[j].Bits() {
			return ps[i].Bits() < ps[j].Bits()
		}
		return ps[i].Addr().Less(ps[j].Addr())
	})
	var out []netip.Prefix
	for _, p := range ps {
		held := false
		for _, q := range out {
			held = held || q.Contains(p.Addr())
		}
		if !held {
			out = append(out, p)
		}
	}
	return out
}

// subtract is the networks of ps less every network of minus, as
// networks: each one minus takes out of a larger one is replaced by the
// halves that do not hold it, down to minus's size.
func subtract(ps, minus []netip.Prefix) []netip.Prefix {
	out := append([]netip.Prefix(nil), ps...)
	for _, m := range minus {
		var next []netip.Prefix
		for _, p := range out {
			next = append(next, without(p, m)...)
		}
		out = next
	}
	return out
}

// without is p less m.
func without(p, m netip.Prefix) []netip.Prefix {
	if !p.Overlaps(m) {
		return []netip.Prefix{p}
	}
	if m.Bits() <= p.Bits() {
		return nil // m holds p
	}
	// Split p in two; the half without m stays whole.
	lo := netip.PrefixFrom(p.Addr(), p.Bits()+1)
	hi := netip.PrefixFrom(lastAddr(lo).Next(), p.Bits()+1)
	if lo.Contains(m.Addr()) {
		return append(without(lo, m), hi)
	}
	return append([]netip.Prefix{lo}, without(hi, m)...)
}

// pairElem is the element "vm . network" of an interval set.
func pairElem(vm netip.Addr, p netip.Prefix, comment string) elemSpec {
	first, last := p.Addr().As4(), lastAddr(p).As4()
	text := vm.String() + " . " + p.String()
	if p.Bits() == 32 {
		text = vm.String() + " . " + p.Addr().String()
	}
	return elemSpec{key: append(vm.AsSlice(), first[:]...), keyEnd: append(vm.AsSlice(), last[:]...), comment: comment, text: text}
}

// lastAddr is the last address of an IPv4 network.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n |= uint32(1)<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// learnedComment is the comment of an address Learn adds: the VM and
// the name it was resolved for, which Apply reads back (KeepLearned).
// Comments are capped (NFT_USERDATA_MAXLEN); a cut name is kept by no
// policy, so the address goes at the next change rather than staying.
func learnedComment(vm, name string) string {
	c := "vm " + vm + ": " + name
	if len(c) > 200 {
		c = c[:200]
	}
	return c
}

// learnedName is the name in a learned element's comment.
func learnedName(comment string) string {
	_, name, _ := strings.Cut(comment, ": ")
	return name
}

// Learn lets the closed VM at vm (named vmName) reach addrs: what
// banger's DNS server is answering it for name. Each address stays for
// timeout (at most LearnedIdle), and for LearnedIdle after each packet
// the VM sends to it. Adding an address the VM already has restarts
// its timeout (kernels before 6.11 keep the old one; the refresh on
// use still holds). The caller sends the answer only after Learn
// returns, so the guest cannot connect before it may.
func (n *Net) Learn(vm netip.Addr, vmName, name string, addrs []netip.Addr, timeout time.Duration) error {
	if !vm.Is4() {
		return fmt.Errorf("learning addresses for VM %q: %v is not an IPv4 address", vmName, vm)
	}
	timeout = min(max(timeout, time.Second), LearnedIdle)
	set := &nftables.Set{Table: &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}, Name: LearnedSet,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr), Concatenation: true, HasTimeout: true}
	var elems []nftables.SetElement
	for _, a := range addrs {
		if !a.Is4() {
			continue
		}
		elems = append(elems, nftables.SetElement{Key: append(vm.AsSlice(), a.AsSlice()...), Timeout: timeout,
			Comment: learnedComment(vmName, name)})
	}
	if len(elems) == 0 {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	c, err := n.learnConnLocked()
	if err == nil {
		if err = c.SetAddElements(set, elems); err == nil {
			err = c.Flush()
		}
		if err != nil {
			// A broken socket is not reused.
			c.CloseLasting()
			n.learn = nil
		}
	}
	if err != nil {
		return fmt.Errorf("letting VM %q reach the addresses of %s: %w", vmName, name, err)
	}
	return nil
}

// Learned lists the addresses Learn gave the VM at vm that are still
// in the set (kept alive by the VM's packets or not yet expired).
func (n *Net) Learned(vm netip.Addr) ([]netip.Addr, error) {
	set := &nftables.Set{Table: &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}, Name: LearnedSet,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr), Concatenation: true}
	n.mu.Lock()
	defer n.mu.Unlock()
	c, err := n.learnConnLocked()
	if err != nil {
		return nil, err
	}
	elems, err := c.GetSetElements(set)
	if err != nil {
		c.CloseLasting()
		n.learn = nil
		return nil, fmt.Errorf("listing the addresses DNS let VM %v reach: %w", vm, err)
	}
	var out []netip.Addr
	key := vm.AsSlice()
	for _, e := range elems {
		if len(e.Key) == 8 && string(e.Key[:4]) == string(key) {
			out = append(out, netip.AddrFrom4([4]byte(e.Key[4:])))
		}
	}
	return out, nil
}

// learnConnLocked is the nftables connection Learn keeps open: one per
// DNS answer would cost a socket, and with a namespace two setns, per
// answer. Its socket is made in the namespace and stays there.
func (n *Net) learnConnLocked() (*nftables.Conn, error) {
	if n.learn != nil {
		return n.learn, nil
	}
	err := n.Do(func() (err error) {
		n.learn, err = nftables.New(nftables.AsLasting())
		return err
	})
	if err != nil {
		n.learn = nil
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	return n.learn, nil
}

// staleLearned lists the learned elements in have that no VM may keep:
// those of a VM whose egress is not closed (or that is gone), and those
// whose name its policy no longer allows.
func staleLearned(have []nftables.SetElement, keep map[netip.Addr]func(string) bool) []nftables.SetElement {
	var out []nftables.SetElement
	for _, e := range have {
		vm, ok := netip.AddrFromSlice(e.Key[:min(4, len(e.Key))])
		if k := keep[vm]; ok && k != nil && k(learnedName(e.Comment)) {
			continue
		}
		out = append(out, nftables.SetElement{Key: e.Key})
	}
	return out
}

// The pieces of egress rules, as in ruleset.go.

func nfproto(p byte) match {
	name := map[byte]string{unix.NFPROTO_IPV4: "ipv4", unix.NFPROTO_IPV6: "ipv6"}[p]
	return match{text: "meta nfproto " + name, exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}}
}

func l4proto(p byte) match {
	return match{text: "meta l4proto " + protoName(p), exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}}
}

func protoName(p byte) string {
	return map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[p]
}

// l4Port: `udp dport N` or `tcp dport N`.
func l4Port(p byte, port uint16) match {
	es := l4proto(p).exprs
	es = append(es,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)})
	return match{text: fmt.Sprintf("%s dport %d", protoName(p), port), exprs: es}
}

// ipDaddr matches an IPv4 destination address in the inet family.
func ipDaddr(a netip.Addr) match {
	es := nfproto(unix.NFPROTO_IPV4).exprs
	es = append(es,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()})
	return match{text: "ip daddr " + a.String(), exprs: es}
}

// loadPair loads an IPv4 packet's source and destination addresses
// into the registers of a two-address concatenation.
func loadPair() []expr.Any {
	es := nfproto(unix.NFPROTO_IPV4).exprs
	return append(es,
		&expr.Payload{DestRegister: regIfname, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Payload{DestRegister: regIfname + 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4})
}

// pairIn: the packet's source and destination are an element of set.
func pairIn(set *nftables.Set) match {
	es := append(loadPair(), &expr.Lookup{SourceRegister: regIfname, SetName: set.Name, SetID: set.ID})
	return match{text: "ip saddr . ip daddr @" + set.Name, exprs: es}
}

// saddrIn: the packet's source is an element of set.
func saddrIn(set *nftables.Set) match {
	es := append(nfproto(unix.NFPROTO_IPV4).exprs,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID})
	return match{text: "ip saddr @" + set.Name, exprs: es}
}

// refresh restarts the timeout of the packet's element of set.
func refresh(set *nftables.Set, timeout time.Duration) match {
	es := append(loadPair(), &expr.Dynset{SrcRegKey: regIfname, SetName: set.Name, SetID: set.ID,
		Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: timeout})
	return match{text: fmt.Sprintf("update @%s { ip saddr . ip daddr timeout %s }", set.Name, nftDuration(timeout)), exprs: es}
}

// nftDuration writes d as nft lists it: 10m, 1h, 30s.
func nftDuration(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return fmt.Sprintf("%ds", d/time.Second)
}

// ctReply: a packet in the reply direction of its connection (one
// that the other end opened).
func ctReply() match {
	return match{text: "ct direction reply", exprs: []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}}, // IP_CT_DIR_REPLY
	}}
}

// ctEstablished: `ct state established,related`.
func ctEstablished() match {
	return match{text: "ct state established,related", exprs: []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}}
}

func reject(typ uint32, code uint8, text string) match {
	return match{text: text, exprs: []expr.Any{&expr.Reject{Type: typ, Code: code}}}
}

// bridgeIPDaddrIn: an IPv4 frame (bridge family) for an address in p.
func bridgeIPDaddrIn(p netip.Prefix) match {
	es := etherType(unix.ETH_P_IP)
	mask := binaryutil.BigEndian.PutUint32(^uint32(0) << (32 - p.Bits()))
	es = append(es,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()})
	return match{text: "ip daddr " + p.Masked().String(), exprs: es}
}

// bridgeIPDaddrIs: an IPv4 frame (bridge family) for a, or not for a.
func bridgeIPDaddrIs(eq bool, a netip.Addr) match {
	op, text := expr.CmpOpEq, "ip daddr "+a.String()
	if !eq {
		op, text = expr.CmpOpNeq, "ip daddr != "+a.String()
	}
	es := append(etherType(unix.ETH_P_IP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: op, Register: 1, Data: a.AsSlice()})
	return match{text: text, exprs: es}
}
