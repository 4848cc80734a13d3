package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The kernel template map: a director service's persistence templates,
// mirrored into a map of the director table (masked client address →
// choice mark, with element timeouts), consulted before the queue rule. A
// returning client's new flow gets its choice mark there and never goes up
// the queue; only a client the kernel does not know is queued. tether's
// table stays the one truth: every change of a template (package
// affinity's journal) rewrites or removes the element.
//
// Timeouts: an element of a template with open flows has none (a template
// never expires while a flow is open); when the last flow closes, the
// element is written again with the time the template has left, so that
// the kernel forgets the client when tether does.

// TemplateElem is one template as its map holds it.
type TemplateElem struct {
	Client netip.Addr // masked
	Mark   uint32     // the server's choice mark
	// Timeout is what the element has left; 0: none (the template is busy).
	Timeout time.Duration
}

// TemplateOp writes (Drop false) or removes one element of the map of the
// director service Service in the table of Family.
type TemplateOp struct {
	Family  nftables.TableFamily
	Service int // the index in Director.Services
	Drop    bool
	Elem    TemplateElem
}

// NoTemplates takes the template maps out of tables (a kernel that cannot
// keep them).
func NoTemplates(tables map[nftables.TableFamily]*Director) {
	for _, d := range tables {
		for i := range d.Services {
			d.Services[i].Templates = 0
		}
	}
}

// templateSet is the kernel template map of service i.
func (d Director) templateSet(t *nftables.Table, i int) *nftables.Set {
	s := d.Services[i]
	return &nftables.Set{Table: t, Name: templateSetName(i), IsMap: true, HasTimeout: true, Size: s.Templates,
		KeyType: addrType(d.Family), DataType: nftables.TypeMark}
}

func templateSetName(i int) string { return fmt.Sprintf("templates%d", i) }

func templateElem(e TemplateElem) nftables.SetElement {
	return nftables.SetElement{Key: e.Client.Unmap().AsSlice(), Val: binaryutil.NativeEndian.PutUint32(e.Mark), Timeout: e.Timeout}
}

// addTemplates makes service i's template map with its first elements and
// the rule that gives a known client its choice mark before the queue.
func (d Director) addTemplates(c *nftables.Conn, t *nftables.Table, steer *nftables.Chain, choices *nftables.Set, i int) error {
	s := d.Services[i]
	m := d.templateSet(t, i)
	elems := make([]nftables.SetElement, 0, len(s.Initial))
	for _, e := range s.Initial {
		if e.Client.Unmap().Is4() != is6(d.Family) {
			elems = append(elems, templateElem(e))
		}
	}
	if err := c.AddSet(m, elems); err != nil {
		return fmt.Errorf("nft: map %s: %w", m.Name, err)
	}
	off, n := d.saddr()
	r := append(d.match(s), loadMeta, &expr.Lookup{SourceRegister: 1, SetName: choices.Name, SetID: choices.ID, Invert: true},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: netmask(d.Family, s.FallbackBits).AsSlice(), Xor: make([]byte, n)},
		&expr.Lookup{SourceRegister: 1, SetName: m.Name, SetID: m.ID, DestRegister: 1, IsDestRegSet: true},
		storeMeta,
	)
	c.AddRule(&nftables.Rule{Table: t, Chain: steer, Exprs: r})
	return nil
}

// ApplyTemplates queues ops on c: for each client, its last op says the
// element's state (a write replaces it, a drop removes it), so each map
// gets one destroy of every client touched and one add of those written,
// in the one transaction the caller flushes. Ops for a service without a
// map are skipped.
func ApplyTemplates(c *nftables.Conn, tables map[nftables.TableFamily]*Director, ops []TemplateOp) error {
	type mapOf struct {
		fam nftables.TableFamily
		i   int
	}
	last := map[mapOf]map[netip.Addr]TemplateOp{}
	for _, op := range ops {
		d := tables[op.Family]
		if d == nil || op.Service >= len(d.Services) || d.Services[op.Service].Templates == 0 {
			continue
		}
		k := mapOf{op.Family, op.Service}
		if last[k] == nil {
			last[k] = map[netip.Addr]TemplateOp{}
		}
		last[k][op.Elem.Client] = op
	}
	for k, byClient := range last {
		d := tables[k.fam]
		m := d.templateSet(d.table(false), k.i)
		var gone, add []nftables.SetElement
		for _, op := range byClient {
			e := templateElem(op.Elem)
			gone = append(gone, nftables.SetElement{Key: e.Key})
			if !op.Drop {
				add = append(add, e)
			}
		}
		if err := c.SetDestroyElements(m, gone); err != nil {
			return err
		}
		if len(add) > 0 {
			if err := c.SetAddElements(m, add); err != nil {
				return err
			}
		}
	}
	return nil
}

// ResetTemplates queues the replacement of every element of service i's
// map in d by elems.
func ResetTemplates(c *nftables.Conn, d *Director, i int, elems []TemplateElem) error {
	m := d.templateSet(d.table(false), i)
	c.FlushSet(m)
	if len(elems) == 0 {
		return nil
	}
	es := make([]nftables.SetElement, 0, len(elems))
	for _, e := range elems {
		if e.Client.Unmap().Is4() != is6(d.Family) {
			es = append(es, templateElem(e))
		}
	}
	return c.SetAddElements(m, es)
}

// ReadTemplates lists service i's kernel template map in the table of
// family (tests and `tether nft show` compare it with tether's table).
func ReadTemplates(c *nftables.Conn, fam nftables.TableFamily, i int) ([]TemplateElem, error) {
	d := Director{Family: fam}
	elems, err := c.GetSetElements(&nftables.Set{Table: d.table(false), Name: templateSetName(i), IsMap: true,
		KeyType: nftables.TypeIPAddr, DataType: nftables.TypeMark})
	if err != nil {
		return nil, err
	}
	out := make([]TemplateElem, 0, len(elems))
	for _, e := range elems {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok || len(e.Val) != 4 {
			return nil, fmt.Errorf("nft: map %s: an element of %d/%d bytes", templateSetName(i), len(e.Key), len(e.Val))
		}
		out = append(out, TemplateElem{Client: a, Mark: binaryutil.NativeEndian.Uint32(e.Val), Timeout: e.Expires})
	}
	return out, nil
}

// ProbeDestroy says whether the kernel takes the destroy of a set element
// that may be missing (Linux 6.3), which the template map's writes need.
// It makes and removes a scratch table.
func ProbeDestroy(c *nftables.Conn, fam nftables.TableFamily) (bool, error) {
	t := &nftables.Table{Name: "tether_probe", Family: fam}
	c.AddTable(t)
	s := &nftables.Set{Table: t, Name: "probe", KeyType: nftables.TypeMark}
	if err := c.AddSet(s, nil); err != nil {
		return false, err
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("nft: probe table: %w", err)
	}
	err := c.SetDestroyElements(s, []nftables.SetElement{{Key: u32(1)}})
	if err == nil {
		err = c.Flush()
	}
	c.DelTable(t)
	if derr := c.Flush(); derr != nil {
		return false, fmt.Errorf("nft: remove probe table: %w", derr)
	}
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOENT):
		return false, nil
	}
	return false, err
}

// LiveTemplate is one element of a kernel template map as the kernel holds
// it, with the server its choice mark names.
type LiveTemplate struct {
	Map    string // ip tether templates0, ...
	Client netip.Addr
	Server netip.AddrPort // port 0: the client's destination port is kept
	// Expires is what the element has left; 0: none (its template has
	// open flows).
	Expires time.Duration
}

// ReadLiveTemplates lists every kernel template map of the director tables
// in c's network namespace, each element with its server (from the tables'
// dnat maps).
func ReadLiveTemplates(c *nftables.Conn) ([]LiveTemplate, error) {
	var out []LiveTemplate
	for _, fam := range Families {
		d := Director{Family: fam}
		t := d.table(false)
		sets, err := c.GetSets(t)
		if errors.Is(err, unix.ENOENT) {
			continue // no director table in this family
		}
		if err != nil {
			return nil, fmt.Errorf("nft: sets of %s: %w", t.Name, err)
		}
		servers, err := d.readChoices(c)
		if err != nil {
			return nil, err
		}
		for _, s := range sets {
			var i int
			if _, err := fmt.Sscanf(s.Name, "templates%d", &i); err != nil {
				continue
			}
			elems, err := ReadTemplates(c, fam, i)
			if err != nil {
				return nil, err
			}
			for _, e := range elems {
				out = append(out, LiveTemplate{Map: fmt.Sprintf("%s %s %s", famName(fam), d.tableName(), s.Name), Client: e.Client, Server: servers[e.Mark], Expires: e.Timeout})
			}
		}
	}
	return out, nil
}

// readChoices reads the servers the choice marks of d's table name, from
// its dnat maps.
func (d Director) readChoices(c *nftables.Conn) (map[uint32]netip.AddrPort, error) {
	out := map[uint32]netip.AddrPort{}
	_, n := d.addrLen()
	for _, name := range []string{"dnat_port", "dnat_addr"} {
		elems, err := c.GetSetElements(&nftables.Set{Table: d.table(false), Name: name, IsMap: true, KeyType: nftables.TypeMark})
		if err != nil {
			return nil, fmt.Errorf("nft: map %s: %w", name, err)
		}
		for _, e := range elems {
			if len(e.Key) != 4 || len(e.Val) < int(n) {
				continue
			}
			a, _ := netip.AddrFromSlice(e.Val[:n])
			var port uint16
			if name == "dnat_port" && len(e.Val) >= int(n)+2 {
				port = binaryutil.BigEndian.Uint16(e.Val[n : n+2])
			}
			out[binaryutil.NativeEndian.Uint32(e.Key)] = netip.AddrPortFrom(a, port)
		}
	}
	return out, nil
}
