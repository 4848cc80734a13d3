package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/google/nftables"
	metrics "github.com/hashicorp/go-metrics"
	"github.com/mdlayher/netlink"
	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/marks"
	"github.com/tetherlb/tether/nft"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// reconcileEvery is how often the director compares its open flows with
// conntrack's, to give back the templates of flows whose end it did not
// hear of (a first packet dropped after the verdict, lost events).
const reconcileEvery = 60 * time.Second

// reconcileGrace keeps a flow younger than this out of reconciliation: its
// conntrack entry may not be confirmed yet.
const reconcileGrace = 10 * time.Second

// director is the NFQUEUE data path. The first packet of a new flow of a
// director service comes up a queue; tether picks the server (templates
// and scheduler, as the socket proxy does) and answers with the server's
// choice mark; the kernel's nat chain rewrites the flow to that server and
// conntrack carries the rest. A flow's template is released when conntrack
// reports the flow destroyed.
type director struct {
	set    config.Director // queue settings: fixed until restart
	native bool            // nft's own queue statement
	log    *slog.Logger
	nft    *nftables.Conn // lasting: owns table ip/ip6 tether
	queues []*nfqueue.Nfqueue

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the conntrack follower

	view    atomic.Pointer[directorView]
	markFor map[choiceKey]uint32 // stable across reloads; under Proxy.mu
	// applied are the tables last applied, which the next apply updates
	// in place (nft.Director.Update); under Proxy.mu.
	applied map[nftables.TableFamily]*nft.Director

	mu    sync.Mutex
	flows map[flowKey]*dflow

	verdicts, unparsed, unknown, noServer, verdictErrs, overruns, queueErrs, ended, reconciled atomic.Uint64
}

// directorView is what the verdict path reads: replaced whole on reload.
type directorView struct {
	marks    map[choiceKey]uint32
	markMask uint32
}

// choiceKey names a server of a service; its mark is the verdict.
type choiceKey struct {
	svc    svcKey
	server netip.AddrPort
}

// dflow is an open director flow and what it holds.
type dflow struct {
	mark uint32
	srv  *Server
	st   *serviceState
	born time.Time
	// lease is the template hold, when the service is persistent.
	lease affinity.Lease
}

// openDirector probes the kernel's queue statement and binds the queues.
// It needs CAP_NET_ADMIN.
func (p *Proxy) openDirector(cfg *config.File) (*director, error) {
	d := &director{set: cfg.Director, log: p.log, flows: map[flowKey]*dflow{}, markFor: map[choiceKey]uint32{}}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	err := p.inNamespace(func() error {
		c, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
		d.nft = c
		if d.native, err = nft.ProbeQueue(c, nftables.TableFamilyIPv4); err != nil {
			return err
		}
		flags := uint32(nfqueue.NfQaCfgFlagGSO)
		if cfg.Director.FailOpen {
			flags |= nfqueue.NfQaCfgFlagFailOpen
		}
		for i := range cfg.Director.Queues {
			num := cfg.Director.Queue + i
			q, err := nfqueue.Open(&nfqueue.Config{
				NfQueue: num, MaxPacketLen: 128, MaxQueueLen: cfg.Director.QueueLength,
				Copymode: nfqueue.NfQnlCopyPacket, Flags: flags, AfFamily: unix.AF_UNSPEC,
			})
			if err != nil {
				return fmt.Errorf("nfqueue %d: %w", num, err)
			}
			d.queues = append(d.queues, q)
			if err := q.RegisterWithErrorFunc(d.ctx, p.verdictFunc(d, q), d.queueError); err != nil {
				return fmt.Errorf("nfqueue %d (is another program bound to it?): %w", num, err)
			}
		}
		return nil
	})
	if err != nil {
		d.close()
		return nil, fmt.Errorf("director: %w", err)
	}
	d.view.Store(&directorView{})
	d.wg.Add(1)
	go p.followConntrack(d)
	how := "xtables NFQUEUE target (this kernel has no nft queue statement)"
	if d.native {
		how = "nft queue statement"
	}
	p.log.Info("director: queues bound", "queues", fmt.Sprintf("%d-%d", d.set.Queue, d.set.Queue+d.set.Queues-1), "queue_statement", how, "fail_open", d.set.FailOpen)
	return d, nil
}

// queueError keeps reading after an overrun (the kernel dropped or, fail
// open, accepted packets the queue had no room for) and after an error
// answer to a verdict (ENOENT: the kernel flushed the packet, as it does
// with every queued packet when any netfilter hook of the namespace goes,
// a table replaced by tether or by anyone's nft). It stops at stop, or
// when the socket is gone.
func (d *director) queueError(err error) int {
	if d.ctx.Err() != nil || errors.Is(err, net.ErrClosed) || errors.Is(err, unix.EBADF) {
		return 1
	}
	var oe *netlink.OpError
	if errors.As(err, &oe) && (errors.Is(oe.Err, unix.ENOBUFS) || oe.Timeout()) {
		d.overruns.Add(1)
		return 0
	}
	if d.queueErrs.Add(1) == 1 {
		d.log.Warn("director: an error reading the queue; reading on (tether_director_queue_errors counts them)", "err", err)
	}
	// An error that repeats at once (a socket broken in a way not seen
	// here) must not spin a core: at most a thousand a second.
	time.Sleep(time.Millisecond)
	return 0
}

// close unbinds the queues and stops following conntrack; the flows stay
// with the kernel.
func (d *director) close() {
	d.cancel()
	for _, q := range d.queues {
		q.Close()
	}
	d.wg.Wait()
}

// verdictFunc answers each queued packet of queue q.
func (p *Proxy) verdictFunc(d *director, q *nfqueue.Nfqueue) nfqueue.HookFunc {
	return func(a nfqueue.Attribute) int {
		if a.PacketID == nil || a.Payload == nil {
			return 0
		}
		var mark uint32
		if a.Mark != nil {
			mark = *a.Mark
		}
		v, m, set := p.decide(d, *a.Payload, mark)
		if p.verdictHook != nil {
			p.verdictHook()
		}
		var err error
		if set {
			err = q.SetVerdictWithOption(*a.PacketID, v, nfqueue.WithMark(m))
		} else {
			err = q.SetVerdict(*a.PacketID, v)
		}
		if err != nil {
			d.verdictErrs.Add(1)
		}
		return 0
	}
}

// decide picks the server of the new flow in packet b: the verdict, and
// the mark to give the packet (set) or none.
func (p *Proxy) decide(d *director, b []byte, mark uint32) (verdict int, newMark uint32, set bool) {
	k, err := parseFlow(b)
	if err != nil {
		d.unparsed.Add(1)
		return nfqueue.NfAccept, 0, false
	}
	view := d.view.Load()
	svc := p.directorService(view, k, mark)
	if svc == nil {
		d.unknown.Add(1) // a config change raced the packet
		return nfqueue.NfAccept, 0, false
	}
	d.mu.Lock()
	f := d.flows[k]
	d.mu.Unlock()
	if f != nil { // the first packet again, before conntrack kept the choice
		return nfqueue.NfAccept, f.mark, true
	}
	st := svc.state.Load()
	srv, lease, err := p.choose(st, k.src.Addr())
	if err != nil {
		d.noServer.Add(1)
		return nfqueue.NfDrop, 0, false // the client retries
	}
	f = &dflow{srv: srv, st: st, born: time.Now(), lease: lease}
	m, ok := view.marks[choiceKey{svc.key, srv.Addr}]
	if !ok {
		p.endFlow(f)
		d.unknown.Add(1)
		return nfqueue.NfDrop, 0, false
	}
	f.mark = m
	d.mu.Lock()
	if old := d.flows[k]; old != nil {
		d.mu.Unlock()
		p.endFlow(f)
		return nfqueue.NfAccept, old.mark, true
	}
	d.flows[k] = f
	d.mu.Unlock()
	srv.accepted.Add(1)
	d.verdicts.Add(1)
	return nfqueue.NfAccept, m, true
}

// directorService is the director service of flow k: by the packet's mark
// (a firewall-mark service), else by its destination.
func (p *Proxy) directorService(view *directorView, k flowKey, mark uint32) *service {
	p.svcMu.RLock()
	defer p.svcMu.RUnlock()
	if m := mark & view.markMask; m != 0 {
		if s := p.services[svcKey{mark: m}]; s != nil && s.director {
			return s
		}
	}
	if s := p.services[svcKey{listen: k.dst, udp: k.proto == unix.IPPROTO_UDP}]; s != nil && s.director {
		return s
	}
	return nil
}

// endFlow gives back what a flow held.
func (p *Proxy) endFlow(f *dflow) {
	p.release(f.srv, f.lease)
}

// followConntrack releases flows as conntrack destroys them, and
// reconciles with conntrack's table every reconcileEvery and after lost
// events.
func (p *Proxy) followConntrack(d *director) {
	defer d.wg.Done()
	tick := time.NewTicker(reconcileEvery)
	defer tick.Stop()
	for d.ctx.Err() == nil {
		err := p.listenDestroy(d, tick.C)
		if d.ctx.Err() != nil {
			return
		}
		d.overruns.Add(1)
		p.log.Warn("director: conntrack events lost; reconciling open flows with conntrack", "err", err)
		p.reconcile(d)
		select {
		case <-d.ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// listenDestroy follows destroy events until the director stops (nil) or
// the listener fails.
func (p *Proxy) listenDestroy(d *director, tick <-chan time.Time) error {
	var ct *conntrack.Conn
	err := p.inNamespace(func() (err error) {
		ct, err = conntrack.Dial(nil)
		return err
	})
	if err != nil {
		return err
	}
	ct.SetReadBuffer(8 << 20)
	evs := make(chan conntrack.Event, 1024)
	errc, err := ct.Listen(evs, 1, []netfilter.NetlinkGroup{netfilter.GroupCTDestroy})
	if err != nil {
		ct.Close()
		return err
	}
	for {
		select {
		case ev := <-evs:
			if ev.Flow != nil {
				p.flowDestroyed(d, ev.Flow)
			}
		case <-tick:
			p.reconcile(d)
		case err := <-errc:
			ct.Close() // the worker has returned
			return err
		case <-d.ctx.Done():
			// Close waits for the worker, which may be sending: drain.
			closed := make(chan struct{})
			go func() { ct.Close(); close(closed) }()
			for {
				select {
				case <-evs:
				case <-errc:
				case <-closed:
					return nil
				}
			}
		}
	}
}

func tupleKey(t conntrack.Tuple) flowKey {
	return flowKey{proto: t.Proto.Protocol,
		src: netip.AddrPortFrom(t.IP.SourceAddress.Unmap(), t.Proto.SourcePort),
		dst: netip.AddrPortFrom(t.IP.DestinationAddress.Unmap(), t.Proto.DestinationPort)}
}

func (p *Proxy) flowDestroyed(d *director, f *conntrack.Flow) {
	k := tupleKey(f.TupleOrig)
	d.mu.Lock()
	fl := d.flows[k]
	delete(d.flows, k)
	d.mu.Unlock()
	if fl != nil {
		d.ended.Add(1)
		p.endFlow(fl)
	}
}

// reconcile ends the flows conntrack no longer has.
func (p *Proxy) reconcile(d *director) {
	var live []conntrack.Flow
	err := p.inNamespace(func() error {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		live, err = c.Dump(nil)
		return err
	})
	if err != nil {
		p.log.Warn("director: conntrack dump failed; open flows not reconciled", "err", err)
		return
	}
	have := make(map[flowKey]bool, len(live))
	for _, f := range live {
		have[tupleKey(f.TupleOrig)] = true
	}
	var gone []*dflow
	cutoff := time.Now().Add(-reconcileGrace)
	d.mu.Lock()
	for k, f := range d.flows {
		if !have[k] && f.born.Before(cutoff) {
			delete(d.flows, k)
			gone = append(gone, f)
		}
	}
	d.mu.Unlock()
	for _, f := range gone {
		p.endFlow(f)
	}
	d.reconciled.Add(uint64(len(gone)))
}

// DirectorFlows is the number of open director flows tether holds a
// template for.
func (p *Proxy) DirectorFlows() int {
	d := p.dir.Load()
	if d == nil {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.flows)
}

// applyDirector puts the director tables of cfg in place in one nftables
// transaction (both families and the NAT anchor), with stable choice
// marks, then lets the verdict path use the new marks.
func (p *Proxy) applyDirector(cfg *config.File) error {
	d := p.dir.Load()
	old := d.markFor
	assigned := assignMarks(old, choicesOf(cfg), cfg.Director.MarkBase)
	q := nft.Queue{Num: d.set.Queue, Total: d.set.Queues, CPUFanout: d.set.CPUFanout, Bypass: d.set.FailOpen, Native: d.native}
	tables := directorTables(cfg, assigned, q, p.liveWeights(cfg))
	err := p.inNamespace(func() error {
		for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
			var err error
			if prev := d.applied[fam]; prev != nil {
				err = tables[fam].Update(d.nft, *prev, !p.noTableOwner)
			} else {
				err = tables[fam].Add(d.nft, !p.noTableOwner)
				nft.AddNATAnchor(d.nft, fam)
			}
			if err != nil {
				return err
			}
		}
		return d.nft.Flush()
	})
	if err != nil {
		return fmt.Errorf("director: apply nftables tables ip/ip6 %s (needs CAP_NET_ADMIN, nf_tables, nft_nat and the queue): %w", nft.TableName, err)
	}
	d.markFor = assigned
	d.applied = tables
	d.view.Store(&directorView{marks: assigned, markMask: cfg.MarkSet.MarkMask()})
	if cfg.Director.ExpireNodest == config.ExpireReset {
		p.resetRemoved(old, assigned)
	}
	return nil
}

// liveWeights are the weights the fail-open fallback spreads new flows by
// while no tether reads the queue: each server's weight in force, 0 while
// it is down (health check or server set --down), so that the kernel
// does not send flows to a dead server; the sorry server, when no server
// has weight.
func (p *Proxy) liveWeights(cfg *config.File) map[choiceKey]int {
	w := map[choiceKey]int{}
	for _, sc := range cfg.Services {
		if cfg.ServiceMode(sc) != config.ModeDirector {
			continue
		}
		k := keyOf(sc)
		p.svcMu.RLock()
		svc := p.services[k]
		p.svcMu.RUnlock()
		if svc == nil {
			continue
		}
		st := svc.state.Load()
		total := 0
		for _, srv := range st.servers {
			if !srv.isDown() {
				w[choiceKey{k, srv.Addr}] = srv.Weight()
				total += srv.Weight()
			}
		}
		if total == 0 && st.sorry != nil {
			w[choiceKey{k, st.sorry.Addr}] = 1
		}
	}
	return w
}

// directorFollow re-applies the director's tables after a server of svc
// changed at run time, so that the fail-open fallback follows it.
func (p *Proxy) directorFollow(svc *service) {
	if !svc.director || p.dir.Load() == nil {
		return
	}
	if err := p.applyDirector(p.currentCfg()); err != nil {
		p.log.Error("director: the fail-open fallback could not follow a server change", "service", svc.state.Load().cfg.Name, "err", err)
	}
}

// directorTables renders cfg's director services into one table per
// family, with the given choice marks. weights, when not nil, replaces the
// configured weights of the fail-open fallback (liveWeights).
func directorTables(cfg *config.File, assigned map[choiceKey]uint32, q nft.Queue, weights map[choiceKey]int) map[nftables.TableFamily]*nft.Director {
	set := cfg.MarkSet
	tables := map[nftables.TableFamily]*nft.Director{}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		tables[fam] = &nft.Director{Family: fam, MarkMask: set.MarkMask(), Masquerade: cfg.Director.Masquerade, Queue: q}
	}
	for _, sc := range cfg.Services {
		if cfg.ServiceMode(sc) != config.ModeDirector {
			continue
		}
		k := keyOf(sc)
		for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
			is4 := fam == nftables.TableFamilyIPv4
			ds := nft.DirectorService{Mark: sc.Fwmark, Proto: unix.IPPROTO_TCP}
			if sc.Fwmark == 0 {
				if k.listen.Addr().Is4() != is4 {
					continue
				}
				ds.VIP = k.listen
				if k.udp {
					ds.Proto = unix.IPPROTO_UDP
				}
				ds.FTP = !k.udp && k.listen.Port() == 21
			} else if c, ok := set.ByMark(sc.Fwmark); ok {
				ds.FTP = c.Protocols&marks.TCP != 0 && slices.ContainsFunc(c.Ports, func(r marks.PortRange) bool { return r.From <= 21 && 21 <= r.To })
			}
			ds.FallbackBits = 32
			if !is4 {
				ds.FallbackBits = 128
			}
			if ps := sc.Persistence; ps != nil {
				ds.FallbackBits = ps.Mask.Bits4()
				if !is4 {
					ds.FallbackBits = ps.Mask.Bits6()
				}
			}
			for _, s := range sc.Servers {
				a := s.Addr
				if a.Addr().Is4() != is4 {
					continue
				}
				w := *s.Weight
				if weights != nil {
					w = weights[choiceKey{k, a}]
				}
				ds.Choices = append(ds.Choices, nft.Choice{Mark: assigned[choiceKey{k, a}], Server: a, Weight: w})
			}
			if sc.SorryServer != "" {
				// Weight 0 unless no server has any: the fail-open
				// fallback picks it only then.
				if a := sc.Sorry; a.Addr().Is4() == is4 {
					ds.Choices = append(ds.Choices, nft.Choice{Mark: assigned[choiceKey{k, a}], Server: a, Weight: weights[choiceKey{k, a}]})
				}
			}
			if len(ds.Choices) > 0 {
				tables[fam].Services = append(tables[fam].Services, ds)
			}
		}
	}
	return tables
}

// choicesOf are the choices of cfg's director services, in config order.
func choicesOf(cfg *config.File) []choiceKey {
	var want []choiceKey
	for _, sc := range cfg.Services {
		if cfg.ServiceMode(sc) != config.ModeDirector {
			continue
		}
		for _, s := range sc.Servers {
			want = append(want, choiceKey{keyOf(sc), s.Addr})
		}
		if sc.SorryServer != "" {
			want = append(want, choiceKey{keyOf(sc), sc.Sorry})
		}
	}
	return want
}

// ShowDirector renders the director tables cfg makes, in nft syntax, with
// the marks a fresh start assigns; empty without director services.
func ShowDirector(cfg *config.File) string {
	if !hasDirector(cfg) {
		return ""
	}
	d := cfg.Director
	tables := directorTables(cfg, assignMarks(nil, choicesOf(cfg), d.MarkBase), nft.Queue{Num: d.Queue, Total: d.Queues, CPUFanout: d.CPUFanout, Bypass: d.FailOpen}, nil)
	var out []string
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		if len(tables[fam].Services) > 0 {
			out = append(out, tables[fam].Show())
		}
	}
	return strings.Join(out, "\n")
}

// resetRemoved deletes the conntrack entries of servers that left (IPVS's
// expire_nodest_conn): their clients' next packets start new flows.
func (p *Proxy) resetRemoved(old, now map[choiceKey]uint32) {
	var gone []uint32
	for k, m := range old {
		if _, ok := now[k]; !ok {
			gone = append(gone, m)
		}
	}
	if len(gone) == 0 {
		return
	}
	err := p.inNamespace(func() error {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		for _, m := range gone {
			if err := c.FlushFilter(conntrack.NewFilter().Mark(m)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		p.log.Warn("director: flows of removed servers not reset", "err", err)
	}
}

// assignMarks gives each wanted choice a mark: the one it had, else the
// lowest free one from base, so that marks stay put across reloads and stay
// within base..base+len(want)-1.
func assignMarks(old map[choiceKey]uint32, want []choiceKey, base uint32) map[choiceKey]uint32 {
	out := make(map[choiceKey]uint32, len(want))
	used := map[uint32]bool{}
	for _, k := range want {
		if m, ok := old[k]; ok && m-base < uint32(len(want)) {
			out[k], used[m] = m, true
		}
	}
	next := base
	for _, k := range want {
		if _, ok := out[k]; ok {
			continue
		}
		for used[next] {
			next++
		}
		out[k], used[next] = next, true
	}
	return out
}

// stopDirector unbinds the queues, removes tables ip/ip6 tether (the NAT
// anchor stays, so open flows keep being translated) and gives back every
// flow's template.
func (p *Proxy) stopDirector() error {
	d := p.dir.Swap(nil)
	if d == nil {
		return nil
	}
	d.close()
	var err error
	if d.nft != nil {
		err = p.inNamespace(func() error {
			for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
				d.nft.DelTable(&nftables.Table{Name: nft.TableName, Family: fam})
			}
			ferr := d.nft.Flush()
			if errors.Is(ferr, unix.ENOENT) {
				ferr = nil
			}
			return errors.Join(ferr, d.nft.CloseLasting())
		})
	}
	d.mu.Lock()
	flows := slices.Collect(maps.Values(d.flows))
	d.flows = map[flowKey]*dflow{}
	d.mu.Unlock()
	for _, f := range flows {
		p.endFlow(f)
	}
	return err
}

// emitDirectorMetrics reports the director's counters.
func (p *Proxy) emitDirectorMetrics() {
	d := p.dir.Load()
	if d == nil {
		return
	}
	for _, c := range []struct {
		name string
		v    *atomic.Uint64
	}{
		{"verdicts", &d.verdicts}, {"queue_errors", &d.queueErrs}, {"unparsed", &d.unparsed}, {"unknown", &d.unknown}, {"no_server", &d.noServer},
		{"verdict_errors", &d.verdictErrs}, {"overruns", &d.overruns}, {"flows_ended", &d.ended}, {"flows_reconciled", &d.reconciled},
	} {
		p.met.SetGauge([]string{"director", c.name}, float32(c.v.Load()))
	}
	p.met.SetGauge([]string{"director", "flows"}, float32(p.DirectorFlows()))
	// The kernel's own counts per queue: packets dropped for a full queue
	// (queue_dropped) and for a full socket buffer (user_dropped).
	var text []byte
	p.inNamespace(func() (err error) {
		text, err = os.ReadFile("/proc/net/netfilter/nfnetlink_queue")
		return err
	})
	for _, q := range parseQueueStats(text) {
		l := []metrics.Label{{Name: "queue", Value: strconv.Itoa(int(q.num))}}
		p.met.SetGaugeWithLabels([]string{"director", "queue_dropped"}, float32(q.queueDropped), l)
		p.met.SetGaugeWithLabels([]string{"director", "user_dropped"}, float32(q.userDropped), l)
		p.met.SetGaugeWithLabels([]string{"director", "queue_length"}, float32(q.waiting), l)
	}
}

type queueStats struct {
	num, waiting, queueDropped, userDropped uint64
}

// parseQueueStats reads /proc/net/netfilter/nfnetlink_queue: queue number,
// peer port id, packets waiting, copy mode, copy range, queue dropped, user
// dropped, last id, 1.
func parseQueueStats(b []byte) []queueStats {
	var out []queueStats
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 {
			continue
		}
		var v [7]uint64
		ok := true
		for i := range v {
			n, err := strconv.ParseUint(f[i], 10, 64)
			ok = ok && err == nil
			v[i] = n
		}
		if ok {
			out = append(out, queueStats{num: v[0], waiting: v[2], queueDropped: v[5], userDropped: v[6]})
		}
	}
	return out
}
