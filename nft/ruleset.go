package nft

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/tetherlb/tether/marks"
	"golang.org/x/sys/unix"
)

// TableName is tether's table, in the inet family.
const TableName = "tether"

// UpgradeTableName is the marks table (and the director tables) of a
// tether that took over from one still holding TableName (a hot upgrade):
// both apply the same rules until the old one's go. The upgrade after
// takes TableName again.
const UpgradeTableName = "tether_upgrade"

// MarkTables are the names a marks table can have.
var MarkTables = []string{TableName, UpgradeTableName}

// Ruleset is what tether puts in its table.
type Ruleset struct {
	Marks marks.Set
	// TProxyPort is the port of the transparent TCP listener (both
	// families); zero: flows are marked but not intercepted.
	TProxyPort uint16
	// Direct are the marks of classes the director serves: marked, not
	// TPROXYed.
	Direct []uint32
	// Listened are the marks of classes whose TCP flows tether's own
	// listeners, bound to each of the class's (address, port)s, accept:
	// marked, but not TPROXYed (their UDP flows still are).
	Listened []uint32
	// ACLs are the access lists of TPROXYed classes, by mark (markacl.go).
	ACLs map[uint32]ACL
	// Table is the table's name: TableName, or UpgradeTableName. Empty is
	// TableName.
	Table string
}

func (r Ruleset) tableName() string {
	if r.Table == "" {
		return TableName
	}
	return r.Table
}

// class sets: addresses per family and ports, named by mark so that any
// class name is safe.
type classSets struct {
	v4, v6, ports *nftables.Set
}

func setName(c marks.Class, kind string) string { return fmt.Sprintf("m%d_%s", c.Mark, kind) }

func families(c marks.Class) (v4, v6 []netip.Prefix) {
	for _, p := range c.Addrs {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	return
}

// Add queues the whole table on c: create it if missing, delete it, and
// create it again with every set, chain and rule, so that Flush replaces
// the old table atomically. owner asks the kernel to tie the table to c's
// (lasting) netlink socket, so that it goes when tether dies.
func (r Ruleset) Add(c *nftables.Conn, owner bool) error {
	t := &nftables.Table{Name: r.tableName(), Family: nftables.TableFamilyINet}
	if owner {
		// Every step carries the flag: the kernel refuses to change an
		// owned table's flags (EOPNOTSUPP), even in a create-if-missing.
		t.Flags = nftables.TableFlagOwner
	}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	return r.fill(c, t)
}

// Update queues, on the socket that applied prev, the change from prev to
// r in one transaction that keeps the table and its chain: the rules are
// flushed and written again and the sets made anew, so the chain's
// netfilter hook stays registered (when a hook goes, the kernel drops
// every packet waiting in a queue, the director's included).
func (r Ruleset) Update(c *nftables.Conn, prev Ruleset, owner bool) error {
	t := ruleTable(r.tableName(), owner)
	c.AddTable(t)
	c.FlushChain(&nftables.Chain{Name: "prerouting", Table: t})
	for _, name := range prev.setNames() {
		c.DelSet(&nftables.Set{Table: t, Name: name})
	}
	return r.fill(c, t)
}

func ruleTable(name string, owner bool) *nftables.Table {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	if owner {
		t.Flags = nftables.TableFlagOwner
	}
	return t
}

// setNames are the sets fill makes for r.
func (r Ruleset) setNames() []string {
	var names []string
	for _, cl := range r.Marks.Classes {
		v4, v6 := families(cl)
		if len(v4) > 0 {
			names = append(names, setName(cl, "v4"))
		}
		if len(v6) > 0 {
			names = append(names, setName(cl, "v6"))
		}
		names = append(names, setName(cl, "ports"))
	}
	return append(names, r.aclSetNames()...)
}

// fill queues the sets, the chain (created if missing) and the rules in t.
func (r Ruleset) fill(c *nftables.Conn, t *nftables.Table) error {
	sets := map[uint32]classSets{}
	for _, cl := range r.Marks.Classes {
		var cs classSets
		v4, v6 := families(cl)
		var err error
		if len(v4) > 0 {
			if cs.v4, err = addSet(c, t, setName(cl, "v4"), nftables.TypeIPAddr, addrElems(v4)); err != nil {
				return err
			}
		}
		if len(v6) > 0 {
			if cs.v6, err = addSet(c, t, setName(cl, "v6"), nftables.TypeIP6Addr, addrElems(v6)); err != nil {
				return err
			}
		}
		if cs.ports, err = addSet(c, t, setName(cl, "ports"), nftables.TypeInetService, portElems(cl.Ports)); err != nil {
			return err
		}
		sets[cl.Mark] = cs
	}
	ch := c.AddChain(&nftables.Chain{
		Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle,
	})
	rules := r.rules(sets)
	for _, rule := range rules[:r.marking()] {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: rule})
	}
	// After the marking rules, before TPROXY.
	if err := r.addACLRules(c, t, ch); err != nil {
		return err
	}
	for _, rule := range rules[r.marking():] {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: rule})
	}
	return nil
}

// marking is how many of rules' first rules restore and set class marks
// (the TPROXY rules follow).
func (r Ruleset) marking() int {
	n := 0
	for _, cl := range r.Marks.Classes {
		if !r.stateless(cl) {
			n++ // the restore rule
		}
	}
	for _, cl := range r.Marks.Classes {
		v4, v6 := families(cl)
		for _, has := range []bool{len(v4) > 0, len(v6) > 0} {
			if has {
				n += len(protos(cl.Protocols))
			}
		}
	}
	return n
}

func addSet(c *nftables.Conn, t *nftables.Table, name string, typ nftables.SetDatatype, elems []nftables.SetElement) (*nftables.Set, error) {
	s := &nftables.Set{Table: t, Name: name, KeyType: typ, Interval: true}
	if err := c.AddSet(s, elems); err != nil {
		return nil, fmt.Errorf("nft: set %s: %w", name, err)
	}
	return s, nil
}

// addrElems are interval elements: each prefix is [first, last+1).
func addrElems(ps []netip.Prefix) []nftables.SetElement {
	var out []nftables.SetElement
	for _, p := range ps {
		first := p.Masked().Addr()
		end := lastAddr(p).Next()
		out = append(out, nftables.SetElement{Key: first.AsSlice()})
		if end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func portElems(rs []marks.PortRange) []nftables.SetElement {
	var out []nftables.SetElement
	for _, r := range rs {
		out = append(out, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(r.From)})
		if r.To < 65535 {
			out = append(out, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(r.To + 1), IntervalEnd: true})
		}
	}
	return out
}

func u32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// loadMasked loads a mark (meta or ct) into register 1, masked to tether's
// bits.
func (r Ruleset) loadMasked(load expr.Any) []expr.Any {
	out := []expr.Any{load}
	if m := r.Marks.MarkMask(); m != ^uint32(0) {
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(m), Xor: u32(0)})
	}
	return out
}

// setMark sets tether's bits of a mark (meta or ct) to mark, keeping the
// others: reg1 = (old & ^mask) ^ mark.
func (r Ruleset) setMark(load, store expr.Any, mark uint32) []expr.Any {
	m := r.Marks.MarkMask()
	if m == ^uint32(0) {
		return []expr.Any{&expr.Immediate{Register: 1, Data: u32(mark)}, store}
	}
	return []expr.Any{load, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(^m), Xor: u32(mark)}, store}
}

var (
	loadMeta  = &expr.Meta{Key: expr.MetaKeyMARK, Register: 1}
	storeMeta = &expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1}
	loadCt    = &expr.Ct{Key: expr.CtKeyMARK, Register: 1}
	storeCt   = &expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: 1}
)

func cmpEq(data []byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data} }

// rules are, for each class: restore the mark of established flows from
// conntrack; mark new flows by class and save the mark; TPROXY the marked
// TCP flows.
func (r Ruleset) rules(sets map[uint32]classSets) [][]expr.Any {
	var out [][]expr.Any
	for _, cl := range r.Marks.Classes {
		if r.stateless(cl) {
			continue
		}
		restore := append(r.loadMasked(loadCt), cmpEq(u32(cl.Mark)))
		out = append(out, append(restore, r.setMark(loadMeta, storeMeta, cl.Mark)...))
	}
	for _, cl := range r.Marks.Classes {
		cs := sets[cl.Mark]
		for _, fam := range []struct {
			set    *nftables.Set
			nfp    byte
			off, n uint32
		}{{cs.v4, unix.NFPROTO_IPV4, 16, 4}, {cs.v6, unix.NFPROTO_IPV6, 24, 16}} {
			if fam.set == nil {
				continue
			}
			for _, proto := range protos(cl.Protocols) {
				var rule []expr.Any
				if !r.stateless(cl) {
					rule = []expr.Any{
						&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
						&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(expr.CtStateBitNEW), Xor: u32(0)},
						&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32(0)},
					}
				}
				rule = append(rule,
					&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, cmpEq([]byte{fam.nfp}),
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: fam.off, Len: fam.n},
					&expr.Lookup{SourceRegister: 1, SetName: fam.set.Name, SetID: fam.set.ID},
					&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, cmpEq([]byte{proto}),
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
					&expr.Lookup{SourceRegister: 1, SetName: cs.ports.Name, SetID: cs.ports.ID},
				)
				rule = append(rule, r.setMark(loadMeta, storeMeta, cl.Mark)...)
				if !r.stateless(cl) {
					rule = append(rule, r.setMark(loadCt, storeCt, cl.Mark)...)
				}
				out = append(out, rule)
			}
		}
	}
	if r.TProxyPort == 0 {
		return out
	}
	for _, cl := range r.Marks.Classes {
		if slices.Contains(r.Direct, cl.Mark) {
			continue
		}
		v4, v6 := families(cl)
		for _, fam := range []struct {
			has bool
			nfp byte
		}{{len(v4) > 0, unix.NFPROTO_IPV4}, {len(v6) > 0, unix.NFPROTO_IPV6}} {
			if !fam.has {
				continue
			}
			for _, proto := range r.tproxied(cl) {
				// No nfproto match: the kernel's tproxy breaks on a packet
				// of the other family itself (and nft compiles it so too).
				rule := append(r.loadMasked(loadMeta), cmpEq(u32(cl.Mark)),
					&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, cmpEq([]byte{proto}),
					&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(r.TProxyPort)},
					&expr.TProxy{Family: fam.nfp, TableFamily: byte(nftables.TableFamilyINet), RegPort: 1},
				)
				out = append(out, rule)
			}
		}
	}
	return out
}

// stateless says whether cl's flows are marked packet by packet, by their
// destination, with no conntrack: a listened TCP class without access
// lists. Its flows need the mark for no routing or TPROXY of tether's, and
// its destinations stay local, so a packet's own address and port say
// what conntrack would; and a namespace where nothing else asks for
// conntrack keeps it off (8-10 % more connections a second on loopback,
// README, Firewall-mark services). Restoring the mark from conntrack
// matters only where a reload takes a port from a TPROXYed class.
func (r Ruleset) stateless(cl marks.Class) bool {
	_, acl := r.ACLs[cl.Mark]
	return cl.Protocols == marks.TCP && slices.Contains(r.Listened, cl.Mark) && !acl
}

// tproxied are the protocols of cl's flows that are TPROXYed: not TCP
// when tether listens for the class (Listened).
func (r Ruleset) tproxied(cl marks.Class) []byte {
	p := cl.Protocols
	if slices.Contains(r.Listened, cl.Mark) {
		p &^= marks.TCP
	}
	return protos(p)
}

func protos(p marks.Protocols) []byte {
	var out []byte
	if p&marks.TCP != 0 {
		out = append(out, unix.IPPROTO_TCP)
	}
	if p&marks.UDP != 0 {
		out = append(out, unix.IPPROTO_UDP)
	}
	return out
}

// Show renders the ruleset in nft syntax: what `nft list table inet
// tether` would print for it, loadable with nft -f.
func (r Ruleset) Show() string {
	var b strings.Builder
	m := r.Marks.MarkMask()
	masked := func(what string) string {
		if m == ^uint32(0) {
			return what
		}
		return fmt.Sprintf("%s & %#08x", what, m)
	}
	set := func(what string, mark uint32) string {
		if m == ^uint32(0) {
			return fmt.Sprintf("%s set %#08x", what, mark)
		}
		return fmt.Sprintf("%s set %s & %#08x | %#08x", what, what, ^m, mark)
	}
	fmt.Fprintf(&b, "table inet %s {\n", r.tableName())
	classes := slices.Clone(r.Marks.Classes)
	for _, cl := range classes {
		v4, v6 := families(cl)
		for _, s := range []struct {
			kind, typ string
			elems     []string
		}{{"v4", "ipv4_addr", prefixes(v4)}, {"v6", "ipv6_addr", prefixes(v6)}, {"ports", "inet_service", ports(cl.Ports)}} {
			if len(s.elems) == 0 {
				continue
			}
			fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n\t\tflags interval\n\t\telements = { %s }\n\t}\n\n",
				setName(cl, s.kind), s.typ, strings.Join(s.elems, ", "))
		}
	}
	r.showACL(&b, true, masked)
	fmt.Fprintf(&b, "\tchain prerouting {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n")
	for _, cl := range classes {
		if !r.stateless(cl) {
			fmt.Fprintf(&b, "\t\t%s == %#08x %s\n", masked("ct mark"), cl.Mark, set("meta mark", cl.Mark))
		}
	}
	for _, cl := range classes {
		v4, v6 := families(cl)
		for _, fam := range []struct {
			has        bool
			kind, addr string
		}{{len(v4) > 0, "v4", "ip daddr"}, {len(v6) > 0, "v6", "ip6 daddr"}} {
			if !fam.has {
				continue
			}
			for _, p := range protos(cl.Protocols) {
				name := map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[p]
				if r.stateless(cl) {
					fmt.Fprintf(&b, "\t\t%s @%s %s dport @%s %s\n", fam.addr, setName(cl, fam.kind), name, setName(cl, "ports"), set("meta mark", cl.Mark))
					continue
				}
				fmt.Fprintf(&b, "\t\tct state new %s @%s %s dport @%s %s %s\n", fam.addr, setName(cl, fam.kind), name, setName(cl, "ports"),
					set("meta mark", cl.Mark), set("ct mark", cl.Mark))
			}
		}
	}
	r.showACL(&b, false, masked)
	if r.TProxyPort != 0 {
		for _, cl := range classes {
			if slices.Contains(r.Direct, cl.Mark) {
				continue
			}
			v4, v6 := families(cl)
			for _, fam := range []struct {
				has  bool
				name string
			}{{len(v4) > 0, "ip"}, {len(v6) > 0, "ip6"}} {
				if !fam.has {
					continue
				}
				for _, p := range r.tproxied(cl) {
					name := map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[p]
					fmt.Fprintf(&b, "\t\t%s == %#08x meta l4proto %s tproxy %s to :%d\n", masked("meta mark"), cl.Mark, name, fam.name, r.TProxyPort)
				}
			}
		}
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

func prefixes(ps []netip.Prefix) []string {
	var out []string
	for _, p := range ps {
		if p.IsSingleIP() {
			out = append(out, p.Addr().String())
		} else {
			out = append(out, p.String())
		}
	}
	return out
}

func ports(rs []marks.PortRange) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.String())
	}
	return out
}
