package e2b

import (
	"fmt"
	"net/netip"
	"strings"

	"banger/internal/api"
)

// networkConfig is a sandbox's network as E2B states it (create's
// network, PUT /sandboxes/{id}/network's body).
type networkConfig struct {
	AllowOut []string `json:"allowOut,omitempty"`
	DenyOut  []string `json:"denyOut,omitempty"`
	// AllowPublicTraffic false makes the sandbox's ports (not envd)
	// answer only requests carrying its traffic access token.
	AllowPublicTraffic *bool `json:"allowPublicTraffic,omitempty"`
	// What banger does not do; refused when set.
	Rules       map[string]any `json:"rules,omitempty"`
	EgressProxy any            `json:"egressProxy,omitempty"`
	MaskHost    string         `json:"maskRequestHost,omitempty"`
}

// check refuses what banger cannot do rather than ignore it.
func (n *networkConfig) check() error {
	if n == nil {
		return nil
	}
	if len(n.Rules) > 0 {
		return fmt.Errorf("%w: network rules (per-domain request transforms) are not supported by banger: leave out network.rules", api.ErrInvalid)
	}
	if n.EgressProxy != nil {
		return fmt.Errorf("%w: an egress proxy is not supported by banger: leave out network.egressProxy", api.ErrInvalid)
	}
	if n.MaskHost != "" {
		return fmt.Errorf("%w: maskRequestHost is not supported by banger: leave it out", api.ErrInvalid)
	}
	return nil
}

// policyFor turns E2B's egress rules into banger's (api.Policy's
// allow-out and deny-out lists).
//
// The two disagree on precedence: in E2B an allowed destination wins
// over a denied one, and allowOut alone restricts nothing (it only
// punches holes in denyOut); in banger a denied network is refused
// first, and any allow item closes the VM to everything else. So:
//   - no deny (and internet access not turned off): banger's default
//     rules; allowOut changes nothing, as in E2B;
//   - a deny of everything (0.0.0.0/0, E2B's ALL_TRAFFIC, or
//     allow_internet_access false): only allowOut, names included;
//   - a partial deny: those networks less the allowed addresses (a
//     name in allowOut cannot be carved out of a denied network).
func policyFor(n *networkConfig, allowInternet *bool) (allow, deny []string, err error) {
	var a, d []string
	if n != nil {
		a, d = n.AllowOut, n.DenyOut
	}
	if allowInternet != nil && !*allowInternet {
		d = append(append([]string{}, d...), "0.0.0.0/0")
	}
	if len(d) == 0 {
		return nil, nil, nil
	}
	var denied []netip.Prefix
	for _, item := range d {
		p, err := prefixOf(item)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: network.denyOut %q: an IP address or CIDR (E2B denies no names)", api.ErrInvalid, item)
		}
		if p.Bits() == 0 {
			return a, nil, nil
		}
		denied = append(denied, p)
	}
	for _, item := range a {
		p, err := prefixOf(item)
		if err != nil {
			continue // a name: see above
		}
		var rest []netip.Prefix
		for _, q := range denied {
			rest = append(rest, subtract(q, p)...)
		}
		denied = rest
	}
	for _, p := range denied {
		deny = append(deny, p.String())
	}
	if deny == nil {
		// Every denied network was allowed back: the default rules.
		return nil, nil, nil
	}
	return nil, deny, nil
}

// prefixOf reads an IPv4 address or network.
func prefixOf(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil || !p.Addr().Is4() {
			return netip.Prefix{}, fmt.Errorf("not an IPv4 network")
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Prefix{}, fmt.Errorf("not an IPv4 address")
	}
	return netip.PrefixFrom(a, 32), nil
}

// subtract is p less q, as the fewest prefixes.
func subtract(p, q netip.Prefix) []netip.Prefix {
	if !p.Overlaps(q) {
		return []netip.Prefix{p}
	}
	if q.Bits() <= p.Bits() {
		return nil // q covers p
	}
	// q lies in one half of p: keep the other half, carve the first.
	lo := netip.PrefixFrom(p.Addr(), p.Bits()+1)
	hi := netip.PrefixFrom(lastOf(lo).Next(), p.Bits()+1)
	if lo.Overlaps(q) {
		return append(subtract(lo, q), hi)
	}
	return append([]netip.Prefix{lo}, subtract(hi, q)...)
}

// lastOf is the last address of p.
func lastOf(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n |= (1<<(32-p.Bits()) - 1)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}
