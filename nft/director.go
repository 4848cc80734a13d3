package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/tetherlb/tether/affinity"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// Director is the kernel half of director services in one address family:
// table ip tether (or ip6 tether). New flows of a director service go to
// an NFQUEUE; tether answers with a choice mark, the nat chain rewrites the
// flow to the server the mark names and saves the mark in conntrack, and
// the kernel forwards the rest of the flow.
type Director struct {
	// Family is nftables.TableFamilyIPv4 or TableFamilyIPv6.
	Family nftables.TableFamily
	Queue  Queue
	// MarkMask is the part of the mark a firewall-mark class owns (as
	// marks.Set.MarkMask), to match fwmark services.
	MarkMask uint32
	Services []DirectorService
	// Masquerade rewrites the source of director flows to the balancer's
	// address, for servers that do not route back through it (one arm).
	Masquerade bool
	// Persist keeps the owned table when its owner's socket closes
	// (NFT_TABLE_F_PERSIST, Linux 6.10): with fail-open, a killed tether
	// leaves the kernel forwarding, returning clients by the template
	// map, new ones by the fallback. The next tether adopts or replaces
	// the table. The kernel refuses to change it on a live table.
	Persist bool
	// Table is the tables' name: TableName, or UpgradeTableName for a hot
	// upgrade's new process while the old one holds TableName (as the
	// marks table). Empty is TableName.
	Table string
}

func (d Director) tableName() string {
	if d.Table == "" {
		return TableName
	}
	return d.Table
}

// Queue is how new flows reach tether.
type Queue struct {
	Num, Total uint16 // queues Num..Num+Total-1; Total 0 means 1
	// CPUFanout picks the queue by CPU instead of by flow hash.
	CPUFanout bool
	// Bypass (fail-open) accepts packets when no tether reads the queue;
	// they then go to the kernel's fallback choice of the service, if any.
	Bypass bool
	// Native uses nft's queue statement (CONFIG_NFT_QUEUE); otherwise the
	// xtables NFQUEUE target through NFT_COMPAT.
	Native bool
}

// DirectorService is one director service as the kernel sees it.
type DirectorService struct {
	// Either a listen address (protocol, VIP and port) or a mark.
	Proto byte // unix.IPPROTO_TCP or IPPROTO_UDP
	VIP   netip.AddrPort
	Mark  uint32
	// FTP assigns the kernel's FTP helper to the service's TCP port 21
	// flows, so that passive and active data connections follow the
	// control connection's server (and NAT rewrites the PASV reply).
	FTP bool
	// Choices are the service's servers, each under its own mark.
	Choices []Choice
	// FallbackBits, when Queue.Bypass is set, is the client prefix the
	// kernel hashes to pick a server for flows tether did not answer
	// (the service's persistence netmask; the full address otherwise).
	FallbackBits int
	// Templates, when not 0, is the size of the service's kernel template
	// map (templates.go), and Initial its elements when the table is made.
	Templates uint32
	Initial   []TemplateElem
	// Template is the service's identity in the persistence table.
	Template affinity.Service
	// Allow and Deny are the service's access lists (acl.go).
	Allow, Deny []netip.Prefix
}

// Choice is one server of a service under the mark tether's verdict gives.
type Choice struct {
	Mark   uint32
	Server netip.AddrPort // port 0: keep the client's destination port
	Weight int            // 0: no fallback flows
}

// DirectorChains are the director table's chains: steer (queue new flows,
// restore choices), rewrite (destination NAT), onearm (masquerade).
const (
	chainSteer   = "steer"
	chainRewrite = "rewrite"
	chainOneArm  = "onearm"
	helperFTP    = "ftp"
)

func (d Director) addrLen() (uint32, uint32) { // daddr offset, length
	if d.Family == nftables.TableFamilyIPv6 {
		return 24, 16
	}
	return 16, 4
}

func (d Director) saddr() (uint32, uint32) { return saddrAt(d.Family) }

func (d Director) table(owner bool) *nftables.Table {
	t := &nftables.Table{Name: d.tableName(), Family: d.Family}
	if owner {
		t.Flags = nftables.TableFlagOwner
		if d.Persist {
			t.Flags |= nftables.TableFlagPersist
		}
	}
	return t
}

// Add queues the director table on c, replacing any earlier one atomically
// (as Ruleset.Add does). Use it when what is there is unknown (the first
// apply); afterwards Update keeps the hooks.
func (d Director) Add(c *nftables.Conn, owner bool) error {
	t := d.table(owner)
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	return d.fill(c, t)
}

// Update queues, on the socket that applied prev, the change from prev to
// d in one transaction that keeps the table and its prerouting chains:
// their rules are flushed and written again, and every set, map and
// object is made anew. Deleting a table deletes its chains' netfilter
// hooks, and when any hook of the namespace goes the kernel drops every
// packet waiting in a queue: a replaced table would cost the flows whose
// first packet was in the queue a retransmission.
func (d Director) Update(c *nftables.Conn, prev Director, owner bool) error {
	t := d.table(owner)
	c.AddTable(t)
	c.FlushChain(&nftables.Chain{Name: chainSteer, Table: t})
	c.FlushChain(&nftables.Chain{Name: chainRewrite, Table: t})
	if prev.Masquerade {
		onearm := &nftables.Chain{Name: chainOneArm, Table: t}
		if d.Masquerade {
			c.FlushChain(onearm)
		} else {
			c.DelChain(onearm) // a postrouting hook goes: rare, on a reload that turns masquerade off
		}
	}
	// The rules that referred to them are flushed above.
	for _, name := range prev.setNames() {
		c.DelSet(&nftables.Set{Table: t, Name: name})
	}
	if prev.hasFTP() {
		c.DeleteObject(&nftables.NamedObj{Table: t, Name: helperFTP, Type: nftables.ObjTypeCtHelper})
	}
	return d.fill(c, t)
}

// setNames are the sets and maps fill makes for d.
func (d Director) setNames() []string {
	names := []string{"choices", "dnat_port", "dnat_addr"}
	for i, s := range d.Services {
		if s.Templates > 0 {
			names = append(names, templateSetName(i))
		}
		for _, kind := range s.aclKinds() {
			names = append(names, aclSetName(kind, i))
		}
	}
	if d.Queue.Bypass {
		for i, s := range d.Services {
			if len(fallbackServers(s)) > 0 {
				names = append(names, fmt.Sprintf("fallback%d", i))
			}
		}
	}
	return names
}

// fill queues everything inside table t: sets, maps, objects, chains
// (created if missing) and rules.
func (d Director) fill(c *nftables.Conn, t *nftables.Table) error {
	addrType := addrType(d.Family)
	var marks, withPort, noPort []nftables.SetElement
	for _, s := range d.Services {
		for _, ch := range s.Choices {
			marks = append(marks, nftables.SetElement{Key: u32(ch.Mark)})
			if ch.Server.Port() == 0 {
				noPort = append(noPort, nftables.SetElement{Key: u32(ch.Mark), Val: ch.Server.Addr().AsSlice()})
			} else {
				withPort = append(withPort, nftables.SetElement{Key: u32(ch.Mark), Val: addrPortVal(ch.Server)})
			}
		}
	}
	choices := &nftables.Set{Table: t, Name: "choices", KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian}
	if err := c.AddSet(choices, marks); err != nil {
		return fmt.Errorf("nft: set choices: %w", err)
	}
	dnatPort := &nftables.Set{Table: t, Name: "dnat_port", KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian, IsMap: true,
		DataType: nftables.MustConcatSetType(addrType, nftables.TypeInetService)}
	if err := c.AddSet(dnatPort, withPort); err != nil {
		return fmt.Errorf("nft: map dnat_port: %w", err)
	}
	dnatAddr := &nftables.Set{Table: t, Name: "dnat_addr", KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian, IsMap: true, DataType: addrType}
	if err := c.AddSet(dnatAddr, noPort); err != nil {
		return fmt.Errorf("nft: map dnat_addr: %w", err)
	}
	if d.hasFTP() {
		c.AddObj(&nftables.NamedObj{Table: t, Name: helperFTP, Type: nftables.ObjTypeCtHelper,
			Obj: &expr.CtHelper{Name: "ftp", L3Proto: uint16(nfproto(d.Family)), L4Proto: unix.IPPROTO_TCP}})
	}
	steer := c.AddChain(&nftables.Chain{Name: chainSteer, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityMangle + 10)})
	// A flow that already has its choice (a retransmitted first packet)
	// carries it again and is not queued twice.
	c.AddRule(&nftables.Rule{Table: t, Chain: steer, Exprs: []expr.Any{
		loadCt, &expr.Lookup{SourceRegister: 1, SetName: choices.Name, SetID: choices.ID},
		loadCt, storeMeta,
	}})
	for i, s := range d.Services {
		if err := d.addACL(c, t, steer, i); err != nil {
			return err
		}
		if s.FTP {
			r := append(d.match(s), &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, cmpEq([]byte{unix.IPPROTO_TCP}),
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				cmpEq(binaryutil.BigEndian.PutUint16(21)),
				&expr.Objref{Type: int(nftables.ObjTypeCtHelper), Name: helperFTP})
			c.AddRule(&nftables.Rule{Table: t, Chain: steer, Exprs: r})
		}
		// After the helper rule: a mark service's rules match its
		// class mark, which the template's choice mark replaces.
		if s.Templates > 0 {
			if err := d.addTemplates(c, t, steer, choices, i); err != nil {
				return err
			}
		}
		r := append(d.match(s), loadMeta, &expr.Lookup{SourceRegister: 1, SetName: choices.Name, SetID: choices.ID, Invert: true})
		c.AddRule(&nftables.Rule{Table: t, Chain: steer, Exprs: append(r, d.queue())})
	}
	rewrite := c.AddChain(&nftables.Chain{Name: chainRewrite, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	c.AddRule(&nftables.Rule{Table: t, Chain: rewrite, Exprs: []expr.Any{
		loadMeta, &expr.Lookup{SourceRegister: 1, SetName: choices.Name, SetID: choices.ID},
		loadMeta, storeCt,
	}})
	nfproto := nfproto(d.Family)
	for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
		c.AddRule(&nftables.Rule{Table: t, Chain: rewrite, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, cmpEq([]byte{proto}),
			loadMeta,
			&expr.Lookup{SourceRegister: 1, SetName: dnatPort.Name, SetID: dnatPort.ID, DestRegister: 1, IsDestRegSet: true},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto, RegAddrMin: 1, RegProtoMin: 9, Specified: true},
		}})
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: rewrite, Exprs: []expr.Any{
		loadMeta,
		&expr.Lookup{SourceRegister: 1, SetName: dnatAddr.Name, SetID: dnatAddr.ID, DestRegister: 1, IsDestRegSet: true},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto, RegAddrMin: 1},
	}})
	if d.Queue.Bypass {
		for i, s := range d.Services {
			if err := d.addFallback(c, t, rewrite, choices, i, s); err != nil {
				return err
			}
		}
	}
	if d.Masquerade {
		post := c.AddChain(&nftables.Chain{Name: chainOneArm, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: []expr.Any{
			loadCt, &expr.Lookup{SourceRegister: 1, SetName: choices.Name, SetID: choices.ID},
			&expr.Masq{},
		}})
	}
	return nil
}

// addFallback is the fail-open choice: a flow that passed the queue
// without a verdict (no tether reading it) is hashed by its masked client
// address over the service's servers, so that it is served, and a client
// group lands on one server.
func (d Director) addFallback(c *nftables.Conn, t *nftables.Table, ch *nftables.Chain, choices *nftables.Set, i int, s DirectorService) error {
	servers := fallbackServers(s)
	if len(servers) == 0 {
		return nil
	}
	addrType := addrType(d.Family)
	withPort := servers[0].Port() != 0
	// The hash leaves a host-order 32-bit index, as a mark is kept.
	m := &nftables.Set{Table: t, Name: fmt.Sprintf("fallback%d", i), KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian, IsMap: true, DataType: addrType}
	if withPort {
		m.DataType = nftables.MustConcatSetType(addrType, nftables.TypeInetService)
	}
	var elems []nftables.SetElement
	for j, a := range servers {
		val := a.Addr().AsSlice()
		if withPort {
			val = addrPortVal(a)
		}
		elems = append(elems, nftables.SetElement{Key: u32(uint32(j)), Val: val})
	}
	if err := c.AddSet(m, elems); err != nil {
		return fmt.Errorf("nft: map %s: %w", m.Name, err)
	}
	off, n := d.saddr()
	mask := netmask(d.Family, s.FallbackBits).AsSlice()
	r := append(d.match(s), loadMeta, &expr.Lookup{SourceRegister: 1, SetName: choices.Name, SetID: choices.ID, Invert: true},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)},
		&expr.Hash{SourceRegister: 1, DestRegister: 1, Length: n, Modulus: uint32(len(servers)), Type: expr.HashTypeJenkins},
		&expr.Lookup{SourceRegister: 1, SetName: m.Name, SetID: m.ID, DestRegister: 1, IsDestRegSet: true},
	)
	nat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto(d.Family), RegAddrMin: 1}
	if withPort {
		nat.RegProtoMin, nat.Specified = 9, true
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: append(r, nat)})
	return nil
}

// fallbackServers are the servers with weight, all with a port or all
// without (the first decides; a map holds one kind).
func fallbackServers(s DirectorService) []netip.AddrPort {
	var out []netip.AddrPort
	for _, ch := range s.Choices {
		if ch.Weight == 0 {
			continue
		}
		if len(out) > 0 && (out[0].Port() == 0) != (ch.Server.Port() == 0) {
			continue
		}
		out = append(out, ch.Server)
	}
	return out
}

func (d Director) hasFTP() bool {
	for _, s := range d.Services {
		if s.FTP {
			return true
		}
	}
	return false
}

// match is a new flow of s.
func (d Director) match(s DirectorService) []expr.Any {
	r := []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(expr.CtStateBitNEW), Xor: u32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32(0)},
	}
	if s.Mark != 0 {
		r = append(r, loadMeta)
		if d.MarkMask != ^uint32(0) && d.MarkMask != 0 {
			r = append(r, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(d.MarkMask), Xor: u32(0)})
		}
		return append(r, cmpEq(u32(s.Mark)))
	}
	off, n := d.addrLen()
	return append(r,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		cmpEq(s.VIP.Addr().AsSlice()),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, cmpEq([]byte{s.Proto}),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		cmpEq(binaryutil.BigEndian.PutUint16(s.VIP.Port())),
	)
}

// queue is the queue statement: nft's own, or the xtables target.
func (d Director) queue() expr.Any {
	q := d.Queue
	total := max(q.Total, 1)
	var flags uint16
	if q.Bypass {
		flags |= 1 // NFQ_FLAG_BYPASS / NFT_QUEUE_FLAG_BYPASS
	}
	if q.CPUFanout && total > 1 {
		flags |= 2 // NFQ_FLAG_CPU_FANOUT / NFT_QUEUE_FLAG_CPU_FANOUT
	}
	if q.Native {
		return &expr.Queue{Num: q.Num, Total: total, Flag: expr.QueueFlag(flags)}
	}
	// struct xt_NFQ_info_v3 { __u16 queuenum, queues_total, flags; },
	// in host order, padded to XT_ALIGN.
	info := make(xt.Unknown, 8)
	binary.NativeEndian.PutUint16(info[0:], q.Num)
	binary.NativeEndian.PutUint16(info[2:], total)
	binary.NativeEndian.PutUint16(info[4:], flags)
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &info}
}

func addrPortVal(a netip.AddrPort) []byte {
	// A concatenation's fields each take whole 32-bit registers: the port
	// is padded to 4 bytes.
	return append(a.Addr().AsSlice(), byte(a.Port()>>8), byte(a.Port()), 0, 0)
}
