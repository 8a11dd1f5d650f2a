package vmnet

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"banger/internal/api"
)

func TestParsePolicy(t *testing.T) {
	for _, c := range []struct {
		name        string
		allow, deny []string
		domains     string
		allowP      string
		denyP       string
		str         string
	}{
		{name: "default", str: "default (the internet; not the host, other VMs, private or link-local addresses)"},
		{
			name:    "names, wildcards, addresses and networks; repeated, spaced, cased, duplicated",
			allow:   []string{"Web.Test., *.example.com", "10.99.0.5,203.0.113.0/24", "web.test", "10.99.0.5/32", "_dmarc.x-y.io"},
			domains: "[*.example.com _dmarc.x-y.io web.test]",
			allowP:  "[10.99.0.5/32 203.0.113.0/24]",
			str:     "allow-out *.example.com, _dmarc.x-y.io, web.test, 10.99.0.5, 203.0.113.0/24 only (names through banger's DNS)",
		},
		{
			name:  "deny on top of the default, IPv6 kept",
			deny:  []string{"198.51.100.0/24,192.0.2.1", "2001:db8::/32"},
			denyP: "[192.0.2.1/32 198.51.100.0/24 2001:db8::/32]",
			str:   "default (the internet; not the host, other VMs, private or link-local addresses); deny-out 192.0.2.1, 198.51.100.0/24, 2001:db8::/32",
		},
		{
			name:    "a private address may be allowed",
			allow:   []string{"10.99.0.5", "192.168.0.0/16", "169.254.169.254"},
			domains: "[]",
			allowP:  "[10.99.0.5/32 169.254.169.254/32 192.168.0.0/16]",
		},
		{
			name:    "longest valid name and label",
			allow:   []string{strings.Repeat("a", 63) + "." + strings.Repeat(strings.Repeat("b", 61)+".", 3) + "c"},
			domains: "[" + strings.Repeat("a", 63) + "." + strings.Repeat(strings.Repeat("b", 61)+".", 3) + "c]",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := ParsePolicy(c.allow, c.deny)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
			if c.domains != "" && fmt.Sprint(p.AllowDomains) != c.domains {
				t.Errorf("domains %v, want %s", p.AllowDomains, c.domains)
			}
			if c.allowP != "" && fmt.Sprint(p.AllowPrefixes) != c.allowP {
				t.Errorf("allowed %v, want %s", p.AllowPrefixes, c.allowP)
			}
			if c.denyP != "" && fmt.Sprint(p.DenyPrefixes) != c.denyP {
				t.Errorf("denied %v, want %s", p.DenyPrefixes, c.denyP)
			}
			if c.str != "" && p.String() != c.str {
				t.Errorf("String() = %q\nwant %q", p.String(), c.str)
			}
			// The items read back are the same policy.
			again, err := ParsePolicy(p.AllowOut(), p.DenyOut())
			if err != nil || fmt.Sprint(again) != fmt.Sprint(p) {
				t.Errorf("round trip: %+v, %v; want %+v", again, err, p)
			}
		})
	}
}

// TestParsePolicyRefusesJunk: each bad item fails with one line that
// names it and says what is wrong, as api.ErrInvalid.
func TestParsePolicyRefusesJunk(t *testing.T) {
	long := strings.Repeat(strings.Repeat("a", 63)+".", 4) + "io" // 258
	for _, c := range []struct {
		name        string
		allow, deny []string
		want        string
	}{
		{"wildcard without a domain", []string{"*."}, nil, `--allow-out "*.": a wildcard needs a domain after *.`},
		{"bare wildcard", []string{"*"}, nil, `--allow-out "*": a bare * would allow every name`},
		{"two wildcards", []string{"*.*.x"}, nil, `--allow-out "*.*.x": * may only be the whole first label`},
		{"wildcard inside a label", []string{"a*.example.com"}, nil, `--allow-out "a*.example.com": * may only be`},
		{"address out of range", []string{"300.1.1.1"}, nil, `--allow-out "300.1.1.1": not an IPv4 address`},
		{"three numbers", []string{"10.1.1"}, nil, `--allow-out "10.1.1": not an IPv4 address`},
		{"empty label", []string{"a..b"}, nil, `--allow-out "a..b": has an empty label`},
		{"leading dot", []string{".example.com"}, nil, `--allow-out ".example.com": has an empty label`},
		{"empty item", []string{"web.test,,x.test"}, nil, `--allow-out "web.test,,x.test": an empty item`},
		{"trailing comma", []string{"web.test,"}, nil, `--allow-out "web.test,": an empty item`},
		{"empty value", []string{""}, nil, `--allow-out "": an empty item`},
		{"network with host bits", []string{"10.99.0.5/24"}, nil, `--allow-out "10.99.0.5/24": has bits set past /24: write 10.99.0.0/24 for the network, or 10.99.0.5 for one address`},
		{"network too long", []string{"10.0.0.0/33"}, nil, `--allow-out "10.0.0.0/33": not a network`},
		{"name too long", []string{long}, nil, `: is 258 characters long: names have at most 253`},
		{"label too long", []string{strings.Repeat("a", 64) + ".io"}, nil, `: has a label of 64 characters: at most 63`},
		{"hyphen", []string{"-web.test"}, nil, `--allow-out "-web.test": label "-web" starts or ends with a hyphen`},
		{"bad character", []string{"web test.io"}, nil, `--allow-out "web test.io": has ' '`},
		{"not ASCII", []string{"bücher.de"}, nil, `--allow-out "bücher.de": is not ASCII: write an international name in its xn-- form`},
		{"IPv6 allowed", []string{"2001:db8::1"}, nil, `--allow-out "2001:db8::1": is IPv6: VMs have IPv4 only`},
		{"name denied", nil, []string{"example.com"}, `--deny-out "example.com": takes addresses and networks only`},
		{"bad denied network", nil, []string{"198.51.100.7/24"}, `--deny-out "198.51.100.7/24": has bits set past /24`},
		{"empty deny item", nil, []string{",1.2.3.4"}, `--deny-out ",1.2.3.4": an empty item`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParsePolicy(c.allow, c.deny)
			if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error = %v\nwant one line with %q, wrapping api.ErrInvalid", err, c.want)
			}
		})
	}
	// Every bad item is reported, one line each.
	_, err := ParsePolicy([]string{"*.,ok.test,300.1.1.1"}, []string{"x.test"})
	if lines := strings.Split(err.Error(), "\n"); len(lines) != 3 {
		t.Errorf("three bad items, %d lines:\n%v", len(lines), err)
	}
}

func TestPolicyValidate(t *testing.T) {
	pfx := netip.MustParsePrefix
	for _, c := range []struct {
		name string
		p    Policy
		want string
	}{
		{"upper case", Policy{AllowDomains: []string{"Web.test"}}, `allowed domain "Web.test": not in canonical form`},
		{"final dot", Policy{AllowDomains: []string{"web.test."}}, `allowed domain "web.test.": not in canonical form`},
		{"junk", Policy{AllowDomains: []string{"a..b"}}, `allowed domain "a..b": has an empty label`},
		{"host bits", Policy{AllowPrefixes: []netip.Prefix{pfx("10.0.0.1/8")}}, `allowed network "10.0.0.1/8": has bits set`},
		{"IPv6 allowed", Policy{AllowPrefixes: []netip.Prefix{pfx("2001:db8::/32")}}, `is IPv6`},
		{"unsorted", Policy{AllowDomains: []string{"b.test", "a.test"}}, "not sorted and unique"},
		{"twice", Policy{DenyPrefixes: []netip.Prefix{pfx("192.0.2.0/24"), pfx("192.0.2.0/24")}}, "not sorted and unique"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := c.p.Validate(); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Validate = %v, want %q", err, c.want)
			}
		})
	}
	if err := (Policy{}).Validate(); err != nil {
		t.Errorf("the default policy: %v", err)
	}
}

func TestAllowsName(t *testing.T) {
	p, err := ParsePolicy([]string{"web.test,*.example.com"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"web.test": true, "WEB.test.": true, "www.web.test": false, "eb.test": false,
		"a.example.com.": true, "a.b.example.com": true, "example.com": false, "badexample.com": false,
		"aGVsbG8gdGhlcmU.tunnel.other.test": false, "": false,
	} {
		if got := p.AllowsName(name); got != want {
			t.Errorf("AllowsName(%q) = %v, want %v", name, got, want)
		}
	}
	if !(Policy{}).AllowsName("anything.test") {
		t.Error("the default policy resolves every name")
	}
}

// TestEgressOfPolicy: what hostnet's rules are made of, for the three
// kinds of policy.
func TestEgressOfPolicy(t *testing.T) {
	def, _ := ParsePolicy(nil, nil)
	allow, _ := ParsePolicy([]string{"web.test,*.example.com,10.99.0.5,203.0.113.0/24"}, []string{"203.0.113.9"})
	deny, _ := ParsePolicy(nil, []string{"198.51.100.0/24,2001:db8::/32"})
	for _, c := range []struct {
		name string
		p    Policy
		want string
	}{
		{"default", def, "closed=false allow=[] deny=[] keep=false"},
		{"allow-list with names and networks", allow, "closed=true allow=[10.99.0.5/32 203.0.113.0/24] deny=[203.0.113.9/32] keep=true"},
		{"deny-out (IPv6 left to the rule that drops all of it)", deny, "closed=false allow=[] deny=[198.51.100.0/24] keep=false"},
	} {
		e := c.p.egress()
		got := fmt.Sprintf("closed=%v allow=%v deny=%v keep=%v", e.Closed, e.Allow, e.Deny, e.KeepLearned != nil)
		if got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
	if e := allow.egress(); !e.KeepLearned("www.example.com") || e.KeepLearned("other.test") {
		t.Error("KeepLearned does not follow the allowed names")
	}
}

func TestLearnable(t *testing.T) {
	for a, want := range map[string]bool{
		"198.51.100.2": true, "8.8.8.8": true,
		"10.99.0.5": false, "169.254.169.254": false, "192.168.1.1": false, "172.16.0.1": false, "100.64.0.1": false,
		"127.0.0.1": false, "0.0.0.0": false, "224.0.0.1": false, "255.255.255.255": false, "2001:db8::1": false,
	} {
		if got := learnable(netip.MustParseAddr(a)); got != want {
			t.Errorf("learnable(%s) = %v, want %v", a, got, want)
		}
	}
}
