package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"

	"github.com/tetherlb/tether/budget"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/marks"
	"github.com/tetherlb/tether/udpbatch"
)

// plan is a reload worked out but not yet applied: the listeners it needs
// are already open, so applying it cannot fail for lack of one.
type plan struct {
	cfg   *config.File
	start []*planned     // new services, with their listeners
	keep  []*planned     // services that stay, with their new config
	stop  []*service     // services that go
	tp    *transparent   // newly opened transparent listeners
	mls   *markListeners // the listeners of mark classes that are not TPROXYed
	// handed are the addresses whose running listening sockets change
	// owner: a mark class's taken by a new `listen:` service, or a
	// stopping service's by a class. The old owner stops accepting from
	// them and does not close them; abort leaves them with it.
	handed map[netip.AddrPort]bool
	dir    *dirPath     // newly opened director
	caps   *budget.Caps // the bounds cfg runs with
}

type planned struct {
	cfg config.Service
	svc *service // existing one for keep
	ln  *net.TCPListener
	// more are ln's SO_REUSEPORT siblings, one for each further event loop.
	more []*net.TCPListener
	pc   *net.UDPConn
	// morePC are pc's SO_REUSEPORT siblings, one for each further loop.
	morePC []*net.UDPConn
	// rc and family are pc's raw socket and address family.
	rc     syscall.RawConn
	family int
}

func (pl *plan) abort() {
	for _, s := range pl.start {
		if s.ln != nil && !pl.handed[s.cfg.Key().VIP] { // else still its mark class's
			s.ln.Close()
			for _, l := range s.more {
				l.Close()
			}
		}
		if s.pc != nil {
			s.pc.Close()
			for _, c := range s.morePC {
				c.Close()
			}
		}
	}
	if pl.tp != nil {
		pl.tp.close()
	}
	pl.mls.abort()
	if pl.dir != nil {
		pl.dir.close()
	}
}

// plan matches services by listen address or mark, their identity (and
// their templates' identity): a service whose address is unchanged keeps
// its socket even if renamed.
func (p *Proxy) plan(cfg *config.File) (*plan, error) {
	caps, err := budget.Derive(cfg, p.budget)
	if err != nil {
		return nil, err
	}
	pl := &plan{cfg: cfg, caps: &caps, handed: map[netip.AddrPort]bool{}}
	kept := map[config.ServiceKey]bool{}
	for _, sc := range cfg.Services {
		k := sc.Key()
		if old := p.services[k]; old != nil {
			pl.keep = append(pl.keep, &planned{cfg: sc, svc: old})
			kept[k] = true
			continue
		}
		if sc.Fwmark != 0 || sc.Mode == config.ModeDirector {
			pl.start = append(pl.start, &planned{cfg: sc})
			continue
		}
		if k.UDP {
			pcs, err := p.listenUDP(k.VIP.String())
			if err != nil {
				pl.abort()
				return nil, fmt.Errorf("service %s: %w", sc.Name, err)
			}
			s := &planned{cfg: sc, pc: pcs[0], morePC: pcs[1:]}
			pl.start = append(pl.start, s) // before the error: abort closes it
			if s.rc, err = s.pc.SyscallConn(); err == nil {
				s.family, err = udpbatch.Family(s.rc)
			}
			if err != nil {
				pl.abort()
				return nil, fmt.Errorf("service %s: %w", sc.Name, err)
			}
			continue
		}
		if k.VIP.Port() == 0 {
			pl.abort()
			return nil, fmt.Errorf("service %s: listen %s: port 0 (every port of the VIP) needs a firewall-mark service; the socket proxy listens on one port", sc.Name, sc.Listen)
		}
		lns, err := p.inherit.takeTCP(k.VIP.String()), error(nil)
		if ml := p.marked.Load().byAddr[k.VIP]; lns == nil && ml != nil && ml.stop != nil {
			// The address leaves a mark class: its sockets go on, so that
			// connections in their backlog are not reset by a close.
			lns = ml.lns
			pl.handed[k.VIP] = true
		}
		if lns == nil {
			lns, err = p.listenTCP("tcp", k.VIP.String(), nil)
		}
		if err != nil {
			pl.abort()
			return nil, fmt.Errorf("service %s: %w", sc.Name, err)
		}
		pl.start = append(pl.start, &planned{cfg: sc, ln: lns[0], more: lns[1:]})
	}
	for k, s := range p.services {
		if !kept[k] {
			pl.stop = append(pl.stop, s)
		}
	}
	if p.dir.Load() == nil && cfg.HasDirector() {
		d, err := p.openDirector(cfg)
		if err != nil {
			pl.abort()
			return nil, err
		}
		pl.dir = d
	}
	if len(cfg.Marks) > 0 && (p.tp == nil || p.tp.port != cfg.TProxyPort || p.tp.hasUDP() != coversUDP(cfg)) {
		tp, err := p.openTransparent(cfg, caps.UDPFlows)
		if err != nil {
			pl.abort()
			return nil, err
		}
		pl.tp = tp
	}
	pl.mls = p.planMarkListeners(cfg, pl.stop, pl.handed)
	return pl, nil
}

// commit applies a plan. Building a state cannot fail for a validated
// config, but if it does, the plan's new listeners are closed.
func (p *Proxy) commit(pl *plan) error {
	type built struct {
		pl *planned
		st *serviceState
	}
	var states []built
	for _, s := range slices.Concat(pl.start, pl.keep) {
		var prev *serviceState
		if s.svc != nil {
			prev = s.svc.state.Load()
		}
		st, err := buildState(s.cfg, prev, p.table, pl.caps)
		if err != nil {
			pl.abort()
			return err
		}
		states = append(states, built{s, st})
	}
	if err := p.applyMarks(pl); err != nil {
		pl.abort()
		return err
	}
	p.swapMarkListeners(pl.mls, pl.handed)
	pl.mls = nil
	p.caps.Store(pl.caps)
	for _, old := range pl.stop {
		p.stopService(old, pl.handed[old.key.VIP] && !old.key.UDP)
	}
	for _, b := range states {
		if svc := b.pl.svc; svc != nil {
			svc.state.Store(b.st)
			if svc.flows != nil { // a changed limits.max_flows applies now
				for _, f := range svc.flows.Resize(b.st.maxFlows) {
					p.closeFlow(f, "evicted: a reload lowered max_flows")
				}
			}
			continue
		}
		k := b.pl.cfg.Key()
		svc := &service{key: k, director: b.pl.cfg.Mode == config.ModeDirector, ln: b.pl.ln, more: b.pl.more, pc: b.pl.pc, morePC: b.pl.morePC, rc: b.pl.rc, family: b.pl.family, done: make(chan struct{})}
		svc.state.Store(b.st)
		if svc.pc != nil {
			// Before the service is published: on a loop, its socket
			// changes (serveUDPOnLoop).
			svc.flows = newFlowTable(b.st.maxFlows)
			if !p.serveUDPOnLoops(svc) {
				go p.serveUDP(svc)
			}
		}
		p.svcMu.Lock()
		p.services[k] = svc
		p.svcMu.Unlock()
		if b.pl.pc != nil {
			p.log.Info("udp service listening", "service", b.pl.cfg.Name, "listen", b.pl.pc.LocalAddr(), "scheduler", b.st.cfg.Scheduler, "servers", len(b.st.servers), "one_packet", b.st.cfg.OnePacket)
			continue
		}
		if svc.director {
			close(svc.done) // the director's queues take its flows
			p.log.Info("director service", "service", b.pl.cfg.Name, "listen", b.pl.cfg.Listen, "fwmark", k.Mark, "scheduler", b.st.cfg.Scheduler, "servers", len(b.st.servers))
			continue
		}
		if svc.ln == nil {
			close(svc.done) // a mark service: the transparent listeners accept for it
			p.log.Info("service on firewall mark", "service", b.pl.cfg.Name, "fwmark", k.Mark, "scheduler", b.st.cfg.Scheduler, "servers", len(b.st.servers))
			continue
		}
		svc.stopAccept = p.listenOnLoops(svc.listeners(), &loopService{svc: svc}, func() { p.acceptLoop(svc) })
		p.log.Info("service listening", "service", b.pl.cfg.Name, "listen", svc.ln.Addr(), "scheduler", b.st.cfg.Scheduler, "servers", len(b.st.servers))
	}
	p.setChecks()
	p.startTransparent()
	p.startMarkListeners()
	return p.commitDirector(pl)
}

// commitDirector puts the director in place after the services it serves,
// or stops it when no service needs it.
func (p *Proxy) commitDirector(pl *plan) error {
	if pl.dir != nil {
		p.dir.Store(pl.dir)
		pl.dir = nil
	}
	if !pl.cfg.HasDirector() {
		return p.stopDirector()
	}
	// Changed queue settings wait for the next start (config.RestartNeeded
	// says so to whoever reloads); the tables keep the running queues.
	return p.applyDirector(pl.cfg)
}

// stopService closes a service's listener, unless handedOn (a mark
// class of the new config listens on its address: its sockets go on
// accepting there, their backlog included), and drops its templates; its
// open connections run on until they close.
func (p *Proxy) stopService(s *service, handedOn bool) {
	if handedOn {
		s.stopAccepting()
		p.handing(s.key.VIP)
	} else {
		s.closeListener()
	}
	p.closeUDP(s)
	<-s.done
	p.svcMu.Lock()
	delete(p.services, s.key)
	p.svcMu.Unlock()
	if st := s.state.Load(); st.persistent {
		p.table.RemoveService(st.ref)
	}
	p.log.Info("service stopped", "service", s.state.Load().cfg.Name)
}

// coversUDP reports whether a mark class of cfg covers UDP, so that the
// transparent UDP listeners are needed.
func coversUDP(cfg *config.File) bool {
	for _, c := range cfg.MarkSet.Classes {
		if c.Protocols&marks.UDP != 0 {
			return true
		}
	}
	return false
}
