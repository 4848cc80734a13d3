package nft

import (
	"net/netip"
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
