package debarchive

import (
	"os/exec"
	"testing"

	"banger/internal/testenv"
)

func TestCompareVersions(t *testing.T) {
	// Pairs with a < b, checked against `dpkg --compare-versions A lt B`
	// by TestCompareVersionsAgreesWithDpkg where dpkg exists.
	less := [][2]string{
		{"6.1.192-2", "6.1.192-3"},
		{"6.1.99-1", "6.1.192-1"},
		{"1.0~rc1-1", "1.0-1"},
		{"1.0", "1.0-1"},
		{"1.0-1", "1.0-1+deb12u1"},
		{"1.0-1~bpo12+1", "1.0-1"},
		{"2:1.0", "3:0.1"},
		{"1:9.9", "2:0"},
		{"1.0a", "1.0b"},
		{"1.0", "1.0a"},
		{"1.0~", "1.0"},
		{"1.0~~", "1.0~"},
		{"1.2.3", "1.10"},
		{"0.9", "1.0"},
		{"1.0+a", "1.0.a"},
	}
	for _, p := range less {
		if c := CompareVersions(p[0], p[1]); c >= 0 {
			t.Errorf("CompareVersions(%q, %q) = %d, want < 0", p[0], p[1], c)
		}
		if c := CompareVersions(p[1], p[0]); c <= 0 {
			t.Errorf("CompareVersions(%q, %q) = %d, want > 0", p[1], p[0], c)
		}
	}
	for _, v := range []string{"1.0", "1:2.3-4", "6.1.192-3", "00:1.00-01"} {
		if c := CompareVersions(v, v); c != 0 {
			t.Errorf("CompareVersions(%q, itself) = %d", v, c)
		}
	}
	if CompareVersions("1.01", "1.1") != 0 || CompareVersions("0:1.0", "1.0") != 0 {
		t.Error("leading zeros and a zero epoch must not count")
	}
}

// TestCompareVersionsAgreesWithDpkg checks the order against dpkg itself
// for every pair of a list of tricky versions.
func TestCompareVersionsAgreesWithDpkg(t *testing.T) {
	testenv.RequireBinary(t, "dpkg", "a Debian host has it")
	vs := []string{"1.0", "1.0-1", "1.0~rc1", "1.0+dfsg-1", "1.0a", "1:0.5", "1.0-1+deb12u2", "1.0-1+b1", "6.1.192-3", "6.1.192-2~bpo11+1", "1.0~~", "1.0.0"}
	for _, a := range vs {
		for _, b := range vs {
			want := exec.Command("dpkg", "--compare-versions", a, "lt", b).Run() == nil
			if got := CompareVersions(a, b) < 0; got != want {
				t.Errorf("%q < %q: got %v, dpkg says %v", a, b, got, want)
			}
		}
	}
}
