package nft

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// A director service's access lists as drop rules in its table's steer
// chain, ahead of its template and queue rules: a denied client's first
// packet is dropped in the kernel and never reaches the queue (nor the
// kernel template map). tether's own check at the verdict stays, for a
// reload that races a packet.

func aclSetName(kind string, i int) string { return fmt.Sprintf("%s%d", kind, i) }

// aclKinds are the access lists s has, each a set of its own.
func (s DirectorService) aclKinds() []string {
	var kinds []string
	if len(s.Deny) > 0 {
		kinds = append(kinds, "deny")
	}
	if len(s.Allow) > 0 {
		kinds = append(kinds, "allow")
	}
	return kinds
}

// addACL queues service i's deny and allow sets and their drop rules.
func (d Director) addACL(c *nftables.Conn, t *nftables.Table, steer *nftables.Chain, i int) error {
	s := d.Services[i]
	off, n := d.saddr()
	for _, kind := range s.aclKinds() {
		ps := s.Deny
		if kind == "allow" {
			ps = s.Allow
		}
		set, err := addSet(c, t, aclSetName(kind, i), addrType(d.Family), addrElems(mergePrefixes(ofFamily(ps, d.Family))))
		if err != nil {
			return err
		}
		r := append(d.match(s),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
			// allow: drop what is not in the set; deny: what is.
			&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: kind == "allow"},
			&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
		c.AddRule(&nftables.Rule{Table: t, Chain: steer, Exprs: r})
	}
	return nil
}

// mergePrefixes sorts ps and drops those another one covers, so that an
// interval set takes them (overlapping intervals are refused).
func mergePrefixes(ps []netip.Prefix) []netip.Prefix {
	ps = slices.Clone(ps)
	for i := range ps {
		ps[i] = ps[i].Masked()
	}
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	var out []netip.Prefix
	for _, p := range ps {
		if len(out) > 0 && out[len(out)-1].Overlaps(p) {
			continue // sorted by address, then length: the earlier one is wider
		}
		out = append(out, p)
	}
	return out
}

// showACL renders service i's access-list rules as nft prints them.
func (d Director) showACL(b *strings.Builder, match, addr string, i int) {
	for _, kind := range d.Services[i].aclKinds() {
		op := ""
		if kind == "allow" {
			op = "!= "
		}
		fmt.Fprintf(b, "\t\t%s %s saddr %s@%s counter drop\n", match, addr, op, aclSetName(kind, i))
	}
}

// showACLSets renders the sets of service i.
func (d Director) showACLSets(b *strings.Builder, i int) {
	s := d.Services[i]
	for _, kind := range s.aclKinds() {
		ps := s.Deny
		if kind == "allow" {
			ps = s.Allow
		}
		showAddrSet(b, aclSetName(kind, i), d.Family, mergePrefixes(ofFamily(ps, d.Family)))
	}
}
