package nft

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/marks"
	"golang.org/x/sys/unix"
)

// ACL is a mark service's access lists. In table inet tether they are
// rules after a new flow gets its class mark and before it is TPROXYed: a
// denied TCP client gets a reset (as the transparent proxy gives it), a
// denied UDP datagram is dropped, in the kernel, before a socket sees it.
type ACL struct{ Allow, Deny []netip.Prefix }

// MarkACLs are the access lists of cfg's socket-proxy mark services.
func MarkACLs(cfg *config.File) map[uint32]ACL {
	out := map[uint32]ACL{}
	for _, s := range cfg.Services {
		if s.Fwmark != 0 && cfg.ServiceMode(s) != config.ModeDirector && len(s.AllowNets)+len(s.DenyNets) > 0 {
			out[s.Fwmark] = ACL{Allow: s.AllowNets, Deny: s.DenyNets}
		}
	}
	return out
}

// aclSet is one set of a class's access lists: its kind (deny or allow),
// family and prefixes.
type aclSet struct {
	kind string
	fam  nftables.TableFamily
	ps   []netip.Prefix
}

// aclSets are, for class cl, each (kind, family) set its lists need: a
// deny set where deny has prefixes of the family, an allow set for each
// family the class covers when allow is not empty (an allow list without
// prefixes of a family refuses all of that family).
func (r Ruleset) aclSets(cl marks.Class) []aclSet {
	acl, ok := r.ACLs[cl.Mark]
	if r.TProxyPort == 0 || slices.Contains(r.Direct, cl.Mark) || !ok {
		return nil
	}
	v4, v6 := families(cl)
	var out []aclSet
	for _, fam := range Families {
		if covered := len(v4) > 0 && !is6(fam) || len(v6) > 0 && is6(fam); !covered {
			continue
		}
		if deny := ofFamily(acl.Deny, fam); len(deny) > 0 {
			out = append(out, aclSet{"deny", fam, mergePrefixes(deny)})
		}
		if len(acl.Allow) > 0 {
			out = append(out, aclSet{"allow", fam, mergePrefixes(ofFamily(acl.Allow, fam))})
		}
	}
	return out
}

func markACLSetName(cl marks.Class, kind string, fam nftables.TableFamily) string {
	if is6(fam) {
		return setName(cl, kind+"6") // m<mark>_allow6
	}
	return setName(cl, kind+"4") // m<mark>_deny4
}

// addACLRules queues the sets and rules of every class's access lists.
func (r Ruleset) addACLRules(c *nftables.Conn, t *nftables.Table, ch *nftables.Chain) error {
	for _, cl := range r.Marks.Classes {
		for _, s := range r.aclSets(cl) {
			off, n := saddrAt(s.fam)
			set, err := addSet(c, t, markACLSetName(cl, s.kind, s.fam), addrType(s.fam), addrElems(s.ps))
			if err != nil {
				return err
			}
			match := append(r.loadMasked(loadMeta), cmpEq(u32(cl.Mark)),
				&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(expr.CtStateBitNEW), Xor: u32(0)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32(0)},
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, cmpEq([]byte{byte(nfproto(s.fam))}),
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
				&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: s.kind == "allow"})
			tcp := append(slices.Clone(match), &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, cmpEq([]byte{unix.IPPROTO_TCP}),
				&expr.Counter{}, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
			other := append(slices.Clone(match), &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: tcp})
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: other})
		}
	}
	return nil
}

// aclSetNames are the sets addACLRules makes.
func (r Ruleset) aclSetNames() []string {
	var out []string
	for _, cl := range r.Marks.Classes {
		for _, s := range r.aclSets(cl) {
			out = append(out, markACLSetName(cl, s.kind, s.fam))
		}
	}
	return out
}

// showACL renders the access-list sets (sets true) or rules.
func (r Ruleset) showACL(b *strings.Builder, sets bool, masked func(string) string) {
	for _, cl := range r.Marks.Classes {
		for _, s := range r.aclSets(cl) {
			name := markACLSetName(cl, s.kind, s.fam)
			if sets {
				showAddrSet(b, name, s.fam, s.ps)
				continue
			}
			op := ""
			if s.kind == "allow" {
				op = "!= "
			}
			m := fmt.Sprintf("%s == %#08x ct state new %s saddr %s@%s", masked("meta mark"), cl.Mark, famName(s.fam), op, name)
			fmt.Fprintf(b, "\t\t%s meta l4proto tcp counter reject with tcp reset\n\t\t%s counter drop\n", m, m)
		}
	}
}
