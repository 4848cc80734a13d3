package director

import (
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	metrics "github.com/hashicorp/go-metrics"
	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/nft"
)

// KernelTemplates puts the persistence table's templates of director
// services into the director tables' kernel template maps (see package
// nft, templates.go) and keeps them there: Commit applies tables with
// their elements, and a Mirror writes every later change. Its methods are safe for concurrent use.
type KernelTemplates struct {
	table *affinity.Table
	do    func(func() error) error

	// mu serialises the use of conn, which owns the director tables (a
	// table with the owner flag takes changes only from its owner's
	// socket): the control loop's table updates and the mirror's writes
	// each build and send one batch under it. layout changes with the
	// tables, under it too.
	mu     sync.Mutex
	conn   *nftables.Conn
	layout layout
	mirror *Mirror
	// lag is how late tether may count a flow the map serves (twice the
	// director's conntrack scan interval; SetLag): an idle template's
	// element expires that long before the template, so that a client
	// that comes back meanwhile goes up the queue, which finds the
	// template, rather than through the map unseen while the template
	// expires and another server is chosen for its next flow.
	lag atomic.Pointer[func() time.Duration]
}

// SetLag sets how late tether may count a flow the maps serve: every
// element written from then on expires that long before its template.
func (kt *KernelTemplates) SetLag(lag func() time.Duration) {
	if kt != nil {
		kt.lag.Store(&lag)
	}
}

// lagNow is the current lag; it is read before kt.mu is taken.
func (kt *KernelTemplates) lagNow() time.Duration {
	if f := kt.lag.Load(); f != nil {
		return (*f)()
	}
	return 0
}

// layout is where each service's templates go.
type layout struct {
	tables   map[nftables.TableFamily]*nft.Director
	services map[affinity.Service]*layoutService
}

type layoutService struct {
	index map[nftables.TableFamily]int // the service's index in each family's table
	marks map[netip.AddrPort]uint32    // each server's choice mark
}

func newLayout(tables map[nftables.TableFamily]*nft.Director) layout {
	l := layout{tables: tables, services: map[affinity.Service]*layoutService{}}
	for fam, d := range tables {
		for i, s := range d.Services {
			if s.Templates == 0 {
				continue
			}
			ls := l.services[s.Template]
			if ls == nil {
				ls = &layoutService{index: map[nftables.TableFamily]int{}, marks: map[netip.AddrPort]uint32{}}
				l.services[s.Template] = ls
			}
			ls.index[fam] = i
			for _, ch := range s.Choices {
				ls.marks[ch.Server] = ch.Mark
			}
		}
	}
	return l
}

// mirrorPace spaces the kernel map's writes: at most 50 transactions a
// second from the journal (Sync writes at once). A returning client's
// template reaches the map up to this late (its flows go up the queue
// meanwhile, to the same server); a journal of 4096 changes a shard holds
// far more than a pace's worth.
const mirrorPace = 20 * time.Millisecond

// OpenKernelTemplates starts mirroring table's journal into the template
// maps of the director tables that conn owns. The caller has checked that
// the kernel can keep them (nft.ProbeDestroy). do runs a function in the
// director's network namespace (nil: as is).
func OpenKernelTemplates(table *affinity.Table, conn *nftables.Conn, do func(func() error) error, log *slog.Logger) (*KernelTemplates, error) {
	if do == nil {
		do = func(f func() error) error { return f() }
	}
	kt := &KernelTemplates{table: table, do: do, conn: conn}
	m, err := StartMirror(MirrorOptions{Table: table, Limit: 1 << 15, Apply: kt.apply, Rebuild: kt.rebuild, Logger: log, Pace: mirrorPace})
	if err != nil {
		return nil, err
	}
	kt.mirror = m
	return kt, nil
}

// Close stops mirroring; the maps stay as they are, with their tables.
// Like every method, it does nothing on a nil KernelTemplates (a kernel
// without template maps).
func (kt *KernelTemplates) Close() {
	if kt != nil {
		kt.mirror.Close()
	}
}

// Commit gives each template map of tables the templates the table holds
// now and runs apply, which puts tables in place through conn, with the
// conn to itself: the mirror writes nothing meanwhile, and changes made
// from then on wait in the journal. Then the mirror writes to the new
// tables, and Commit returns once it has written those changes. Without
// kernel template maps (nil), the tables have none.
func (kt *KernelTemplates) Commit(tables map[nftables.TableFamily]*nft.Director, apply func() error) error {
	if kt == nil {
		nft.NoTemplates(tables)
		return apply()
	}
	l := newLayout(tables)
	lag := kt.lagNow()
	kt.mu.Lock()
	for id, ls := range l.services {
		elems := kt.elems(id, ls, lag)
		for fam, i := range ls.index {
			tables[fam].Services[i].Initial = elems
		}
	}
	err := apply()
	if err == nil {
		kt.layout = l
	}
	kt.mu.Unlock()
	if err != nil {
		return err
	}
	kt.mirror.Sync()
	return nil
}

// Sync returns once the kernel has every change the table made before
// the call.
func (kt *KernelTemplates) Sync() {
	if kt != nil {
		kt.mirror.Sync()
	}
}

// Stats are the mirror's counters.
func (kt *KernelTemplates) Stats() MirrorStats { return kt.mirror.Stats() }

// EmitMetrics reports the mirror's counters: template changes written to
// the kernel, write transactions, rebuilds from the table.
func (kt *KernelTemplates) EmitMetrics(m *metrics.Metrics) {
	if kt == nil {
		return
	}
	s := kt.Stats()
	m.SetGauge([]string{"director", "kernel_template_changes"}, float32(s.Changes))
	m.SetGauge([]string{"director", "kernel_template_batches"}, float32(s.Batches))
	m.SetGauge([]string{"director", "kernel_template_rebuilds"}, float32(s.Rebuilds))
}

// elems are service id's templates as its map holds them: a busy one
// without timeout, an idle one with what it has left less the lag.
func (kt *KernelTemplates) elems(id affinity.Service, ls *layoutService, lag time.Duration) []nft.TemplateElem {
	tps := kt.table.List(affinity.Filter{Service: &id})
	out := make([]nft.TemplateElem, 0, len(tps))

	for _, tp := range tps {
		m, ok := ls.marks[tp.Server]
		if !ok {
			continue
		}
		e := nft.TemplateElem{Client: tp.Client.Addr(), Mark: m}
		if tp.Active == 0 {
			if e.Timeout = tp.Remaining - lag; e.Timeout <= 0 {
				continue // the queue decides from now on
			}
		}
		out = append(out, e)
	}
	return out
}

// apply writes changes in one transaction.
func (kt *KernelTemplates) apply(changes []affinity.Change) error {
	lag := kt.lagNow()
	kt.mu.Lock()
	defer kt.mu.Unlock()
	l := kt.layout
	var ops []nft.TemplateOp
	// A template changed several times in the batch (touched by every
	// short flow a conntrack scan found) is written once, as it is last.
	type elemKey struct {
		fam     nftables.TableFamily
		service int
		client  netip.Addr
	}
	at := make(map[elemKey]int, len(changes))

	for _, c := range changes {
		ls := l.services[c.Service]
		if ls == nil {
			continue
		}
		fam := nftables.TableFamilyIPv4
		if !c.Client.Is4() {
			fam = nftables.TableFamilyIPv6
		}
		i, ok := ls.index[fam]
		if !ok {
			continue
		}
		op := nft.TemplateOp{Family: fam, Service: i, Drop: c.Kind == affinity.Dropped, Elem: nft.TemplateElem{Client: c.Client}}
		if !op.Drop {
			m, ok := ls.marks[c.Server]
			op.Drop = !ok // a server without a mark here (a reload raced): the queue decides
			op.Elem.Mark = m
		}
		if c.Kind == affinity.Idle {
			op.Elem.Timeout = c.Timeout - kt.table.Since(c.At) - lag
			if op.Elem.Timeout <= 0 {
				op.Drop = true
			}
		}
		k := elemKey{fam, i, c.Client}
		if j, ok := at[k]; ok {
			ops[j] = op
			continue
		}
		at[k] = len(ops)
		ops = append(ops, op)
	}
	if len(ops) == 0 {
		return nil
	}
	return kt.do(func() error {
		if err := nft.ApplyTemplates(kt.conn, l.tables, ops); err != nil {
			return err
		}
		return kt.conn.Flush()
	})
}

// rebuild writes every map anew from the table, in one transaction.
func (kt *KernelTemplates) rebuild() error {
	lag := kt.lagNow()
	kt.mu.Lock()
	defer kt.mu.Unlock()
	l := kt.layout
	if len(l.services) == 0 {
		return nil
	}
	return kt.do(func() error {
		for id, ls := range l.services {
			elems := kt.elems(id, ls, lag)
			for fam, i := range ls.index {
				if err := nft.ResetTemplates(kt.conn, l.tables[fam], i, elems); err != nil {
					return err
				}
			}
		}
		return kt.conn.Flush()
	})
}
