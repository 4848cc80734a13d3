package nft

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/tetherlb/tether/config"
)

// Marks stay with their server across a reload, a removed server's mark is
// reused by a new one, and marks stay within base..base+n-1.
func TestAssignMarks(t *testing.T) {
	ap := netip.MustParseAddrPort
	web := config.ServiceKey{VIP: ap("198.18.0.10:80")}
	k := func(s string) ChoiceKey { return ChoiceKey{web, ap(s)} }
	first := AssignMarks(nil, []ChoiceKey{k("198.19.0.11:80"), k("198.19.0.12:80"), k("198.19.0.13:80")}, 100)
	if first[k("198.19.0.11:80")] != 100 || first[k("198.19.0.13:80")] != 102 {
		t.Fatalf("first assignment %v", first)
	}
	// .12 goes, .14 comes, order changes.
	second := AssignMarks(first, []ChoiceKey{k("198.19.0.14:80"), k("198.19.0.13:80"), k("198.19.0.11:80")}, 100)
	want := map[ChoiceKey]uint32{k("198.19.0.11:80"): 100, k("198.19.0.13:80"): 102, k("198.19.0.14:80"): 101}
	for c, m := range want {
		if second[c] != m {
			t.Errorf("%v got mark %d, want %d (all: %v)", c.Server, second[c], m, second)
		}
	}
	// Fewer servers: a kept mark past the new range moves into it.
	third := AssignMarks(second, []ChoiceKey{k("198.19.0.13:80")}, 100)
	if third[k("198.19.0.13:80")] != 100 {
		t.Errorf("single server got %d, want 100", third[k("198.19.0.13:80")])
	}
}

// Access-list prefixes go into an interval set, which refuses overlaps:
// a prefix another one covers is dropped.
func TestMergePrefixes(t *testing.T) {
	in := []netip.Prefix{
		netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("192.0.2.7/24"), netip.MustParsePrefix("198.18.0.1/32"),
	}
	got := mergePrefixes(in)
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.18.0.1/32")}
	if !slices.Equal(got, want) {
		t.Errorf("mergePrefixes(%v) = %v, want %v", in, got, want)
	}
}
