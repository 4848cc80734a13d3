package proxy

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/director"
	"github.com/tetherlb/tether/nft"
	"golang.org/x/sys/unix"
)

// dirPath is the NFQUEUE data path: the director (package director) reads
// the queues and asks decideFlow for each new flow; the kernel's nat
// chain rewrites the flow to the server its choice mark names, and
// conntrack carries the rest. A flow's choice (its count on the server,
// its lease) is given back when conntrack reports the flow destroyed.
type dirPath struct {
	set    config.Director // queue settings: fixed until restart (Queue shifted in a hot upgrade)
	table  string          // the tables' name (nft.TableName; the other in a hot upgrade)
	native bool            // nft's own queue statement
	nft    *nftables.Conn  // lasting: owns table ip/ip6 tether
	d      *director.Director[choice]
	kt     *director.KernelTemplates // nil: every new flow goes up the queue

	view atomic.Pointer[directorView]
	// markFor and applied belong to the control loop: the marks in force
	// (stable across reloads) and the tables last applied, which the next
	// apply updates in place (nft.Director.Update).
	markFor map[nft.ChoiceKey]uint32
	applied map[nftables.TableFamily]*nft.Director
}

// directorView is what the verdict path reads: replaced whole on reload.
type directorView struct {
	marks    map[nft.ChoiceKey]uint32
	byMark   map[uint32]nft.ChoiceKey
	markMask uint32
	// scanMark and scanMask match every choice mark (their common
	// leading bits): the kernel's filter for the conntrack scans.
	scanMark, scanMask uint32
}

// newDirectorView indexes the choice marks assigned.
func newDirectorView(assigned map[nft.ChoiceKey]uint32, markMask uint32) *directorView {
	v := &directorView{marks: assigned, byMark: nft.ByMark(assigned), markMask: markMask}
	first := true
	var lo, hi uint32
	for m := range v.byMark {
		if first || m < lo {
			lo = m
		}
		if first || m > hi {
			hi = m
		}
		first = false
	}
	if !first {
		v.scanMask = ^uint32(0) << bits.Len32(lo^hi)
		v.scanMark = lo & v.scanMask
	}
	return v
}

// openDirector probes the kernel's queue statement and binds the queues.
// It needs CAP_NET_ADMIN.
func (p *Proxy) openDirector(cfg *config.File) (*dirPath, error) {
	dp := &dirPath{set: cfg.Director, table: nft.TableName}
	dp.view.Store(&directorView{})
	var kmaps bool
	var perr error
	err := p.inNamespace(func() error {
		c, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
		dp.nft = c
		if p.inherit != nil {
			p.upgradeDirector(dp)
		}
		if dp.native, err = nft.ProbeQueue(c, nftables.TableFamilyIPv4); err == nil {
			kmaps, perr = nft.ProbeDestroy(c, nftables.TableFamilyIPv4)
		}
		return err
	})
	if err == nil && !kmaps {
		p.log.Warn("director: no kernel template maps (the kernel cannot destroy a set element that may be missing; Linux 6.3 can); every new flow goes up the queue", "err", perr)
	} else if err == nil && cfg.Director.KernelTemplatesOn() {
		if dp.kt, err = director.OpenKernelTemplates(p.table, dp.nft, p.do, p.log); err != nil {
			err = fmt.Errorf("kernel template maps: %w", err)
		}
	}
	var adopt func(director.FlowKey, uint32) (choice, bool)
	var seen func(director.FlowKey, uint32)
	if dp.kt != nil {
		adopt = func(k director.FlowKey, mark uint32) (choice, bool) { return p.adoptFlow(dp, k, mark) }
		seen = func(k director.FlowKey, mark uint32) { p.seenFlow(dp, k, mark) }
	}
	if err == nil {
		dp.d, err = director.Open(director.Options[choice]{
			Queues: director.Queues{First: dp.set.Queue, Count: dp.set.Queues, Length: cfg.Director.QueueLength, FailOpen: cfg.Director.FailOpen},
			Logger: p.log, Do: p.do,
			Decide: func(k director.FlowKey, mark uint32) (director.Verdict, uint32, choice) {
				return p.decideFlow(dp, k, mark)
			},
			Release: func(c choice) { p.release(c.srv, c.lease) },
			Adopt:   adopt,
			Seen:    seen,
			Marks: func() (uint32, uint32) {
				v := dp.view.Load()
				return v.scanMark, v.scanMask
			},
			ScanEvery:   p.scanEvery,
			VerdictHook: p.verdictHook,
		})
	}
	if err != nil {
		dp.close()
		return nil, fmt.Errorf("director: %w", err)
	}
	if d := dp.d; d != nil {
		dp.kt.SetLag(func() time.Duration { return 2 * d.ScanInterval() })
	}
	how := "xtables NFQUEUE target (this kernel has no nft queue statement)"
	if dp.native {
		how = "nft queue statement"
	}
	p.log.Info("director: queues bound", "queues", fmt.Sprintf("%d-%d", dp.set.Queue, dp.set.Queue+dp.set.Queues-1), "queue_statement", how, "fail_open", dp.set.FailOpen)
	return dp, nil
}

// upgradeDirector takes, in a hot upgrade's new process, the table name
// and the block of queues the old process does not hold: both sets of
// tables steer (a flow the old one's decided carries its choice mark
// past the new one's queue rule) until the old one's go. The blocks
// alternate between the configured queues and the ones just after them.
func (p *Proxy) upgradeDirector(dp *dirPath) {
	tables, err := dp.nft.ListTables()
	if err != nil {
		return
	}
	for _, t := range tables {
		if t.Family == nftables.TableFamilyINet || t.Flags&nftables.TableFlagOwner == 0 {
			continue // not a director table, or one nobody holds
		}
		switch t.Name {
		case nft.TableName:
			dp.table = nft.UpgradeTableName
			dp.set.Queue += dp.set.Queues
		case nft.UpgradeTableName:
			dp.table = nft.TableName
		default:
			continue
		}
		p.log.Info("director: upgrading alongside the old process's tables", "old", t.Name, "tables", dp.table, "queues", fmt.Sprintf("%d-%d", dp.set.Queue, dp.set.Queue+dp.set.Queues-1))
		return
	}
}

// close unbinds the queues (giving back every flow's hold) and closes the
// nftables connection, leaving the tables as they are.
func (dp *dirPath) close() {
	if dp.d != nil {
		dp.d.Close()
	}
	dp.kt.Close()
	if dp.nft != nil {
		dp.nft.CloseLasting()
	}
}

// decideFlow picks the server of a new director flow k: the service by the
// packet's mark or destination, then the server as every data path picks
// one (choose), then the server's choice mark.
func (p *Proxy) decideFlow(dp *dirPath, k director.FlowKey, mark uint32) (director.Verdict, uint32, choice) {
	view := dp.view.Load()
	svc := p.directorService(view, k, mark)
	if svc == nil {
		return director.Unknown, 0, choice{}
	}
	st := svc.state.Load()
	if !st.cfg.Admits(k.Src.Addr()) {
		st.ev.add(evDenied)
		return director.Denied, 0, choice{}
	}
	ch, err := p.choose(st, k.Src.Addr(), nil)
	if err != nil {
		return director.NoServer, 0, choice{}
	}
	m, ok := view.marks[nft.ChoiceKey{Service: svc.key, Server: ch.srv.Addr}]
	if !ok {
		p.release(ch.srv, ch.lease)
		return director.Stale, 0, choice{}
	}
	ch.srv.accepted.Add(1)
	return director.Chosen, m, ch
}

// adoptFlow counts a new flow the kernel template map sent to its mark's
// server on that server and the client's template, as a queued flow's.
func (p *Proxy) adoptFlow(dp *dirPath, k director.FlowKey, mark uint32) (choice, bool) {
	st, srv, ok := p.markServer(dp, mark)
	if !ok {
		return choice{}, false
	}
	var l affinity.Lease
	if st.persistent && !srv.isDown() { // a template of a server that went down is being dropped
		l, _ = p.table.GetOrBind(st.ref, k.Src.Addr(), affinity.Fixed(srv.Addr))
		if l.Server() != srv.Addr { // rebound meanwhile: the flow is the kernel's, the template stays
			p.table.Release(l)
			l = affinity.Lease{}
		}
	}
	srv.conns.Open()
	srv.accepted.Add(1)
	return choice{st: st, srv: srv, lease: l}, true
}

// markServer is the director service and server whose choice mark is
// mark (ok false: not a choice of ours, or gone with a reload).
func (p *Proxy) markServer(dp *dirPath, mark uint32) (*serviceState, *server, bool) {
	ck, ok := dp.view.Load().byMark[mark]
	if !ok {
		return nil, nil, false
	}
	p.svcMu.RLock()
	svc := p.services[ck.Service]
	p.svcMu.RUnlock()
	if svc == nil || !svc.director {
		return nil, nil, false
	}
	st := svc.state.Load()
	srv := st.byAddr[ck.Server]
	return st, srv, srv != nil
}

// seenFlow counts a flow the kernel template map sent to its mark's
// server that opened and closed between two conntrack scans: its
// client's template restarts its timer, as at a close.
func (p *Proxy) seenFlow(dp *dirPath, k director.FlowKey, mark uint32) {
	st, srv, ok := p.markServer(dp, mark)
	if !ok {
		return
	}
	if st.persistent && !srv.isDown() {
		p.table.Touch(st.ref, k.Src.Addr(), srv.Addr)
	}
	srv.accepted.Add(1)
}

// syncKernel returns once the kernel template maps have every template
// change made so far.
func (p *Proxy) syncKernel() {
	if dp := p.dir.Load(); dp != nil {
		dp.kt.Sync()
	}
}

// directorService is the director service of flow k: by the packet's mark
// (a firewall-mark service), else by its destination.
func (p *Proxy) directorService(view *directorView, k director.FlowKey, mark uint32) *service {
	p.svcMu.RLock()
	defer p.svcMu.RUnlock()
	if m := mark & view.markMask; m != 0 {
		if s := p.services[config.ServiceKey{Mark: m}]; s != nil && s.director {
			return s
		}
	}
	if s := p.services[config.ServiceKey{VIP: k.Dst, UDP: k.Proto == unix.IPPROTO_UDP}]; s != nil && s.director {
		return s
	}
	return nil
}

// DirectorFlows is the number of open director flows tether holds a
// template for.
func (p *Proxy) DirectorFlows() int {
	if dp := p.dir.Load(); dp != nil {
		return dp.d.Flows()
	}
	return 0
}

// removeOrphanDirectorTables deletes director tables no process owns: a
// fail-open tether that was killed left them (persist), or one on a kernel
// without the owner flag. The first apply makes them anew; a table of
// other flags could not be replaced in place.
func (p *Proxy) removeOrphanDirectorTables(c *nftables.Conn) {
	err := p.inNamespace(func() error {
		tables, err := c.ListTables()
		if err != nil {
			return err
		}
		n := 0
		for _, t := range tables {
			if slices.Contains(nft.MarkTables, t.Name) && t.Family != nftables.TableFamilyINet && t.Flags&nftables.TableFlagOwner == 0 {
				p.log.Warn("removing the director table an earlier tether left", "table", t.Name, "family", t.Family)
				c.DelTable(t)
				n++
			}
		}
		if n == 0 {
			return nil
		}
		return c.Flush()
	})
	if err != nil {
		p.log.Warn("the director tables an earlier tether left could not be removed; the apply replaces them", "err", err)
	}
}

// applyDirector puts the director tables of cfg in place in one nftables
// transaction (both families and the NAT anchor), with stable choice
// marks, then lets the verdict path use the new marks.
func (p *Proxy) applyDirector(cfg *config.File) error {
	dp := p.dir.Load()
	old := dp.markFor
	assigned := nft.AssignMarks(old, nft.Choices(cfg), cfg.Director.MarkBase)
	tables := nft.DirectorTables(cfg, assigned, nft.QueueOf(dp.set, dp.native), p.liveWeights(cfg))
	persist := dp.set.FailOpen && !p.noPersist && !p.noTableOwner
	for _, t := range tables {
		t.Persist, t.Table = persist, dp.table
	}
	if dp.applied == nil {
		p.removeOrphanDirectorTables(dp.nft)
	}
	apply := func() error {
		return p.inNamespace(func() error {
			for _, fam := range nft.Families {
				var err error
				if prev := dp.applied[fam]; prev != nil {
					err = tables[fam].Update(dp.nft, *prev, !p.noTableOwner)
				} else {
					err = tables[fam].Add(dp.nft, !p.noTableOwner)
					nft.AddNATAnchor(dp.nft, fam)
				}
				if err != nil {
					return err
				}
			}
			return dp.nft.Flush()
		})
	}
	err := dp.kt.Commit(tables, apply)
	if err != nil && persist && dp.applied == nil && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
		p.log.Warn("this kernel refuses the nftables persist flag (Linux 6.10 has it): with fail_open, a killed tether's director tables go with it, and new and returning clients alike get the kernel's fallback")
		p.noPersist = true
		for _, t := range tables {
			t.Persist = false
		}
		err = dp.kt.Commit(tables, apply)
	}
	if err != nil {
		return fmt.Errorf("director: apply nftables tables ip/ip6 %s (needs CAP_NET_ADMIN, nf_tables, nft_nat and the queue): %w", dp.table, err)
	}
	dp.markFor = assigned
	dp.applied = tables
	dp.view.Store(newDirectorView(assigned, cfg.MarkSet.MarkMask()))
	if cfg.Director.ExpireNodest == config.ExpireReset {
		var gone []uint32
		for k, m := range old {
			if _, ok := assigned[k]; !ok {
				gone = append(gone, m)
			}
		}
		if err := dp.d.ResetMarks(gone); err != nil {
			p.log.Warn("director: flows of removed servers not reset", "err", err)
		}
	}
	return nil
}

// liveWeights are the weights the fail-open fallback spreads new flows by
// while no tether reads the queue: each server's weight in force, 0 while
// it is down (health check or server set --down), so that the kernel
// does not send flows to a dead server; the sorry server, when no server
// has weight.
func (p *Proxy) liveWeights(cfg *config.File) map[nft.ChoiceKey]int {
	w := map[nft.ChoiceKey]int{}
	for _, sc := range cfg.Services {
		if cfg.ServiceMode(sc) != config.ModeDirector {
			continue
		}
		k := sc.Key()
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
				w[nft.ChoiceKey{Service: k, Server: srv.Addr}] = srv.Weight()
				total += srv.Weight()
			}
		}
		if total == 0 && st.sorry != nil {
			w[nft.ChoiceKey{Service: k, Server: st.sorry.Addr}] = 1
		}
	}
	return w
}

// directorServerDown deletes the conntrack entries of srv's flows when the
// config says expire_nodest reset: their clients' next packets start new
// flows, which the queue schedules to a server that is up.
func (p *Proxy) directorServerDown(svc *service, srv *server) {
	dp := p.dir.Load()
	if dp == nil || p.currentCfg().Director.ExpireNodest != config.ExpireReset {
		return
	}
	m, ok := dp.markFor[nft.ChoiceKey{Service: svc.key, Server: srv.Addr}]
	if !ok {
		return
	}
	if err := dp.d.ResetMarks([]uint32{m}); err != nil {
		p.log.Warn("director: flows of a server that went down not reset", "server", srv.Addr, "err", err)
	}
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

// stopDirector unbinds the queues, gives back every flow's hold, and
// removes tables ip/ip6 tether (the NAT anchor stays, so open flows keep
// being translated).
func (p *Proxy) stopDirector() error {
	dp := p.dir.Swap(nil)
	if dp == nil {
		return nil
	}
	dp.d.Close()
	dp.kt.Close() // its writes share dp.nft
	dp.d, dp.kt = nil, nil
	err := p.inNamespace(func() error {
		for _, fam := range nft.Families {
			dp.nft.DelTable(&nftables.Table{Name: dp.table, Family: fam})
		}
		ferr := dp.nft.Flush()
		if errors.Is(ferr, unix.ENOENT) {
			ferr = nil
		}
		return ferr
	})
	dp.close()
	return err
}

// emitDirectorMetrics reports the director's counters and the kernel's
// counts per queue.
func (p *Proxy) emitDirectorMetrics() {
	if dp := p.dir.Load(); dp != nil {
		dp.d.EmitMetrics(p.met, p.do)
		dp.kt.EmitMetrics(p.met)
	}
}
