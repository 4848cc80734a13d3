package cluster

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/tetherlb/tether/affinity"
)

// A full state (memberlist's push/pull) is every live template of its
// sender, with its services and servers said once:
//
//	header | complete u8 | services u16 | services × (service | servers u16 | servers × (addr | port u16))
//	       | count u32 | count × (service u16 | server u16 | client addr | busy u8 | left ms u32)
//
// 14 bytes a template for IPv4 clients: a million fit under memberlist's
// limit.

// stateDict numbers the services and servers of a state being written.
type stateDict struct {
	svcs  []affinity.Service
	srvs  [][]netip.AddrPort
	index map[affinity.Service]int
	srvIx []map[netip.AddrPort]int
}

func (d *stateDict) ids(svc affinity.Service, srv netip.AddrPort) (int, int) {
	i, ok := d.index[svc]
	if !ok {
		i = len(d.svcs)
		d.index[svc] = i
		d.svcs = append(d.svcs, svc)
		d.srvs = append(d.srvs, nil)
		d.srvIx = append(d.srvIx, map[netip.AddrPort]int{})
	}
	j, ok := d.srvIx[i][srv]
	if !ok {
		j = len(d.srvs[i])
		d.srvIx[i][srv] = j
		d.srvs[i] = append(d.srvs[i], srv)
	}
	return i, j
}

// stateRecord is the most a template takes in a state.
const stateRecord = 2 + 2 + 17 + 1 + 4

// LocalState is the full state for a peer: every live template, up to
// MaxStateTemplates and maxStateBytes (then "incomplete").
func (d *delegate) LocalState(join bool) []byte {
	n := (*Node)(d)
	dict := stateDict{index: map[affinity.Service]int{}}
	var body []byte
	buf := make([]affinity.Template, 0, 4096)
	count, complete := 0, true
	for cur := uint64(0); complete; {
		var ts []affinity.Template
		ts, cur = n.cfg.Table.Export(cur, buf)
		for _, t := range ts {
			if len(body) > maxStateBytes-stateRecord || count == n.cfg.MaxStateTemplates || len(dict.svcs) == 1<<16-1 {
				complete = false
				break
			}
			i, j := dict.ids(t.Service, t.Server)
			if j >= 1<<16 {
				continue // a service of more servers than any config has
			}
			body = binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(body, uint16(i)), uint16(j))
			body = appendAddr(body, t.Client.Addr())
			busy := byte(0)
			if t.Active > 0 {
				busy = 1
			}
			body = binary.BigEndian.AppendUint32(append(body, busy), uint32(min(t.Remaining.Milliseconds(), 1<<32-1)))
			count++
		}
		if cur == 0 {
			break
		}
	}
	if !complete {
		n.log.Warn("cluster: full state cut short; peers get the rest as clients come back", "templates", count)
	}
	b := appendHeader(make([]byte, 0, len(body)+4096), kindState, n.id)
	c := byte(0)
	if complete {
		c = 1
	}
	b = binary.BigEndian.AppendUint16(append(b, c), uint16(len(dict.svcs)))
	for i, svc := range dict.svcs {
		b = binary.BigEndian.AppendUint16(appendService(b, svc), uint16(len(dict.srvs[i])))
		for _, s := range dict.srvs[i] {
			b = binary.BigEndian.AppendUint16(appendAddr(b, s.Addr()), s.Port())
		}
	}
	b = binary.BigEndian.AppendUint32(b, uint32(count))
	return append(b, body...)
}

// state is a decoded full state.
type state struct {
	sender   uint32
	complete bool
	svcs     []affinity.Service
	srvs     [][]netip.AddrPort
	count    int
	body     int // where the records start
}

// decodeState checks a whole state (every record) before anything of it is
// applied.
func (n *Node) decodeState(b []byte) (state, error) {
	r := reader{b: b}
	kind, sender := r.header()
	st := state{sender: sender}
	if r.err == nil && kind != kindState {
		r.off--
		r.fail(fmt.Sprintf("state of kind %d", kind))
	}
	st.complete = r.u8("complete flag") == 1
	nsvc := int(r.u16("service count"))
	for i := 0; i < nsvc && r.err == nil; i++ {
		st.svcs = append(st.svcs, r.service())
		nsrv := int(r.u16("server count"))
		var srvs []netip.AddrPort
		for j := 0; j < nsrv && r.err == nil; j++ {
			a := r.addr("server", false)
			ap := netip.AddrPortFrom(a, r.u16("server port"))
			if r.err == nil && ap.Port() == 0 {
				r.fail("server port 0")
			}
			srvs = append(srvs, ap)
		}
		st.srvs = append(st.srvs, srvs)
	}
	st.count = int(r.u32("template count"))
	switch {
	case r.err != nil:
	case st.count > n.cfg.MaxStateTemplates:
		r.fail(fmt.Sprintf("%d templates announced, more than the %d a state may carry", st.count, n.cfg.MaxStateTemplates))
	case st.count > (len(b)-r.off)/minStateRecord:
		r.fail(fmt.Sprintf("%d templates announced in %d bytes", st.count, len(b)-r.off))
	}
	st.body = r.off
	for i := 0; i < st.count && r.err == nil; i++ {
		st.record(&r)
	}
	r.end()
	return st, r.err
}

// minStateRecord is the shortest template in a state (IPv4).
const minStateRecord = 2 + 2 + 5 + 1 + 4

// record reads the next template of the state.
func (st *state) record(r *reader) record {
	i, j := int(r.u16("service index")), int(r.u16("server index"))
	var rec record
	switch {
	case r.err != nil:
	case i >= len(st.svcs):
		r.fail(fmt.Sprintf("service index %d of %d", i, len(st.svcs)))
	case j >= len(st.srvs[i]):
		r.fail(fmt.Sprintf("server index %d of %d", j, len(st.srvs[i])))
	default:
		rec.svc, rec.server = st.svcs[i], st.srvs[i][j]
	}
	rec.client = r.addr("client", false)
	rec.busy, rec.left = r.busyLeft()
	return rec
}

// MergeRemoteState applies a peer's full state, once all of it is checked.
func (d *delegate) MergeRemoteState(b []byte, join bool) {
	n := (*Node)(d)
	start := time.Now()
	st, err := n.decodeState(b)
	if err != nil {
		n.refuse(fmt.Errorf("full state: %w", err))
		return
	}
	if st.sender == n.id {
		return // its own, from a join of itself
	}
	n.mu.Lock()
	n.merge++
	merge := n.merge
	n.mu.Unlock()
	r := reader{b: b, off: st.body}
	for range st.count {
		n.apply(st.sender, st.record(&r), merge)
	}
	if st.complete { // an idle message lost on the way: the state says it
		n.releaseHolds(func(k holdKey, h hold) bool { return k.peer == st.sender && h.seen != merge })
	}
	n.mu.Lock()
	if p := n.peers[st.sender]; p != nil {
		p.templates = st.count
	}
	n.mu.Unlock()
	n.st.merges.Add(1)
	n.st.mergeNanos.Store(int64(time.Since(start)))
	n.st.stateTemplates.Store(int64(st.count))
	if join {
		n.setReady("full state merged")
	}
}
