package vmnet

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"banger/internal/api"
	"banger/internal/hostnet"
)

// Policy is what a VM may reach beyond its bridge: `vm create
// --allow-out LIST --deny-out LIST`. The zero value is the default
// policy: the internet, but not the host (other than banger's DNS),
// other VMs, link-local or private addresses (hostnet.DefaultDenied).
// With any allow item the VM reaches only what is allowed: the
// addresses and networks listed, and the addresses banger's DNS server
// answers it for the names listed (it may use no other resolver).
// Denied networks are refused before anything else.
//
// ParsePolicy makes one from the user's lists; a Policy is canonical
// (lower-case names without the final dot, masked networks, sorted,
// no duplicates) and Validate accepts only that, so one read back from
// the store or the API is checked the same way.
type Policy struct {
	// AllowDomains are names ("example.com") and wildcards
	// ("*.example.com": every name under example.com, not
	// example.com itself).
	AllowDomains []string `json:"allow_domains,omitempty"`
	// AllowPrefixes are IPv4 networks, an address being a /32. They
	// may be private: a VM let into a LAN database on purpose.
	AllowPrefixes []netip.Prefix `json:"allow_prefixes,omitempty"`
	// DenyPrefixes are networks the VM may never reach, allowed or
	// not. IPv6 ones are kept but change nothing: VMs have no IPv6.
	DenyPrefixes []netip.Prefix `json:"deny_prefixes,omitempty"`
	// DirectPrefixes are IPv4 networks the VM reaches with its own
	// address (not masqueraded), private ones included and whether or
	// not it is closed: a Kubernetes cluster's pod network, where pods
	// see each other's addresses. Denied networks still win.
	DirectPrefixes []netip.Prefix `json:"direct_prefixes,omitempty"`
}

// ParsePolicy reads --allow-out and --deny-out values: each a
// comma-separated list (the flags repeat). Allow items are names,
// wildcards, IPv4 addresses and networks; deny items addresses and
// networks. Every bad item is reported, one line each, wrapping
// api.ErrInvalid.
func ParsePolicy(allow, deny []string) (Policy, error) {
	var p Policy
	var errs []error
	for _, item := range items("--allow-out", allow, &errs) {
		if looksLikeAddress(item) {
			pfx, err := parsePrefix(item, false)
			if err != nil {
				errs = append(errs, itemErr("--allow-out", item, err.Error()))
				continue
			}
			p.AllowPrefixes = append(p.AllowPrefixes, pfx)
			continue
		}
		name, err := canonicalDomain(item)
		if err != nil {
			errs = append(errs, itemErr("--allow-out", item, err.Error()))
			continue
		}
		p.AllowDomains = append(p.AllowDomains, name)
	}
	for _, item := range items("--deny-out", deny, &errs) {
		if !looksLikeAddress(item) {
			errs = append(errs, itemErr("--deny-out", item, "takes addresses and networks only; to keep a VM from a name, allow the names it may reach with --allow-out"))
			continue
		}
		pfx, err := parsePrefix(item, true)
		if err != nil {
			errs = append(errs, itemErr("--deny-out", item, err.Error()))
			continue
		}
		p.DenyPrefixes = append(p.DenyPrefixes, pfx)
	}
	if err := errors.Join(errs...); err != nil {
		return Policy{}, err
	}
	p.AllowDomains = sortedUnique(p.AllowDomains, strings.Compare)
	p.AllowPrefixes = sortedUnique(p.AllowPrefixes, comparePrefix)
	p.DenyPrefixes = sortedUnique(p.DenyPrefixes, comparePrefix)
	return p, nil
}

// ParseDirect reads direct networks (Policy.DirectPrefixes): IPv4
// addresses and networks, comma-separated lists, reported as
// ParsePolicy reports its items.
func ParseDirect(direct []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var errs []error
	for _, item := range items("direct", direct, &errs) {
		pfx, err := parsePrefix(item, false)
		if err != nil {
			errs = append(errs, itemErr("direct network", item, err.Error()))
			continue
		}
		out = append(out, pfx)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return sortedUnique(out, comparePrefix), nil
}

// Validate checks a Policy read back from elsewhere: every item valid
// and the lists canonical (what ParsePolicy makes).
func (p Policy) Validate() error {
	var errs []error
	for _, d := range p.AllowDomains {
		if c, err := canonicalDomain(d); err != nil || c != d {
			why := "not in canonical form (lower case, no final dot)"
			if err != nil {
				why = err.Error()
			}
			errs = append(errs, itemErr("allowed domain", d, why))
		}
	}
	check := func(what string, ps []netip.Prefix, v6 bool) {
		for _, pfx := range ps {
			if _, err := parsePrefix(pfx.String(), v6); err != nil {
				errs = append(errs, itemErr(what, pfx.String(), err.Error()))
			}
		}
	}
	check("allowed network", p.AllowPrefixes, false)
	check("denied network", p.DenyPrefixes, true)
	check("direct network", p.DirectPrefixes, false)
	if !slices.Equal(p.AllowDomains, sortedUnique(p.AllowDomains, strings.Compare)) ||
		!slices.Equal(p.DirectPrefixes, sortedUnique(p.DirectPrefixes, comparePrefix)) ||
		!slices.Equal(p.AllowPrefixes, sortedUnique(p.AllowPrefixes, comparePrefix)) ||
		!slices.Equal(p.DenyPrefixes, sortedUnique(p.DenyPrefixes, comparePrefix)) {
		errs = append(errs, fmt.Errorf("%w: egress policy lists are not sorted and unique: make them with vmnet.ParsePolicy", api.ErrInvalid))
	}
	return errors.Join(errs...)
}

// Closed reports whether the VM reaches only what p allows (any allow
// item was given).
func (p Policy) Closed() bool { return len(p.AllowDomains)+len(p.AllowPrefixes) > 0 }

// IsDefault reports whether p is the default policy.
func (p Policy) IsDefault() bool {
	return !p.Closed() && len(p.DenyPrefixes) == 0 && len(p.DirectPrefixes) == 0
}

// AllowsName reports whether a VM under p may resolve name (with or
// without the final dot, any case). A policy that is not closed
// resolves every name.
func (p Policy) AllowsName(name string) bool {
	if !p.Closed() {
		return true
	}
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	for _, d := range p.AllowDomains {
		if suffix, ok := strings.CutPrefix(d, "*"); ok {
			if len(name) > len(suffix) && strings.HasSuffix(name, suffix) {
				return true
			}
		} else if name == d {
			return true
		}
	}
	return false
}

// AllowOut and DenyOut are p as --allow-out and --deny-out items
// (addresses without /32): what to store, show or send back to
// ParsePolicy.
func (p Policy) AllowOut() []string {
	out := append([]string(nil), p.AllowDomains...)
	return append(out, prefixItems(p.AllowPrefixes)...)
}

func (p Policy) DenyOut() []string { return prefixItems(p.DenyPrefixes) }

// Direct is p's direct networks as items.
func (p Policy) Direct() []string { return prefixItems(p.DirectPrefixes) }

// String is p in one line, for `vm show`.
func (p Policy) String() string {
	s := "default (the internet; not the host, other VMs, private or link-local addresses)"
	if p.Closed() {
		s = "allow-out " + strings.Join(p.AllowOut(), ", ") + " only (names through banger's DNS)"
	}
	if len(p.DenyPrefixes) > 0 {
		s += "; deny-out " + strings.Join(p.DenyOut(), ", ")
	}
	if len(p.DirectPrefixes) > 0 {
		s += "; direct " + strings.Join(p.Direct(), ", ")
	}
	return s
}

// egress is p as hostnet's rules take it.
func (p Policy) egress() hostnet.Egress {
	e := hostnet.Egress{Closed: p.Closed(), Allow: p.AllowPrefixes, Direct: p.DirectPrefixes}
	for _, d := range p.DenyPrefixes {
		if d.Addr().Is4() {
			e.Deny = append(e.Deny, d) // IPv6 is dropped anyway
		}
	}
	if e.Closed {
		e.KeepLearned = p.AllowsName
	}
	return e
}

func prefixItems(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, pfx := range ps {
		if pfx.IsSingleIP() {
			out = append(out, pfx.Addr().String())
		} else {
			out = append(out, pfx.String())
		}
	}
	return out
}

// items splits the comma-separated lists of flag, reporting empty items.
func items(flag string, lists []string, errs *[]error) []string {
	var out []string
	for _, list := range lists {
		for _, it := range strings.Split(list, ",") {
			it = strings.TrimSpace(it)
			if it == "" {
				*errs = append(*errs, fmt.Errorf("%w: %s %q: an empty item: separate items with single commas", api.ErrInvalid, flag, list))
				continue
			}
			out = append(out, it)
		}
	}
	return out
}

func itemErr(what, item, why string) error {
	return fmt.Errorf("%w: %s %q: %s", api.ErrInvalid, what, item, why)
}

// looksLikeAddress: digits, dots and a slash (IPv4), or a colon (IPv6).
// No valid name ends in an all-digit label, so "300.1.1.1" is a bad
// address, not a name.
func looksLikeAddress(s string) bool {
	if strings.ContainsAny(s, ":/") {
		return true
	}
	last := s[strings.LastIndexByte(s, '.')+1:]
	return last != "" && strings.Trim(last, "0123456789") == ""
}

// parsePrefix reads an address or network; IPv6 is refused unless v6.
func parsePrefix(s string, v6 bool) (netip.Prefix, error) {
	var pfx netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if pfx, err = netip.ParsePrefix(s); err != nil {
			return pfx, fmt.Errorf("not a network: use ADDRESS/BITS, e.g. 10.99.0.0/24")
		}
		if m := pfx.Masked(); m != pfx {
			return pfx, fmt.Errorf("has bits set past /%d: write %s for the network, or %s for one address", pfx.Bits(), m, pfx.Addr())
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return pfx, fmt.Errorf("not an IPv4 address (four numbers 0-255, e.g. 10.99.0.5)")
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if pfx.Addr().Zone() != "" || pfx.Addr().Is4In6() {
		return pfx, fmt.Errorf("write the address plainly, without a zone or an IPv4-mapped form")
	}
	if !v6 && !pfx.Addr().Is4() {
		return pfx, fmt.Errorf("is IPv6: VMs have IPv4 only, and IPv6 is always denied")
	}
	return pfx, nil
}

// canonicalDomain checks a name or wildcard and returns it in lower
// case without the final dot.
func canonicalDomain(s string) (string, error) {
	name := strings.ToLower(strings.TrimSuffix(s, "."))
	rest, wild := strings.CutPrefix(name, "*.")
	switch {
	case name == "*" && s != "*":
		wild = true // "*." is a wildcard without its domain
		fallthrough
	case wild && rest == "":
		return "", fmt.Errorf("a wildcard needs a domain after *. (e.g. *.example.com)")
	case name == "*":
		return "", fmt.Errorf("a bare * would allow every name: leave --allow-out out for the default policy, or list domains")
	case strings.Contains(rest, "*"):
		return "", fmt.Errorf("* may only be the whole first label (*.example.com), once")
	case len(name) > 253:
		return "", fmt.Errorf("is %d characters long: names have at most 253", len(name))
	}
	for _, label := range strings.Split(rest, ".") {
		switch {
		case label == "":
			return "", fmt.Errorf("has an empty label (two dots, or a dot at the start)")
		case len(label) > 63:
			return "", fmt.Errorf("has a label of %d characters: at most 63", len(label))
		case strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-"):
			return "", fmt.Errorf("label %q starts or ends with a hyphen", label)
		}
		for _, r := range label {
			if r > 0x7f {
				return "", fmt.Errorf("is not ASCII: write an international name in its xn-- form")
			}
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return "", fmt.Errorf("has %q: names are letters, digits, hyphens and underscores", r)
			}
		}
	}
	return name, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func sortedUnique[T comparable](s []T, cmp func(a, b T) int) []T {
	if len(s) == 0 {
		return nil
	}
	s = slices.Clone(s)
	slices.SortFunc(s, cmp)
	return slices.Compact(s)
}
