package proxy

import (
	"net/netip"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/health"
)

// checkKey names one health-checked server of one service: a server in
// two services is checked for each, with each one's check.
type checkKey struct {
	svc    config.ServiceKey
	server netip.AddrPort
}

// setChecks makes the health monitor check exactly the servers of the
// services in force, and brings every server's health flags in line with
// the monitor: a new or changed check starts in its start state, a server
// without a check is healthy. It runs on the control loop, after the
// services are in place.
func (p *Proxy) setChecks() {
	targets := map[checkKey]health.Target{}
	for _, svc := range p.serviceList() {
		st := svc.state.Load()
		for i, sc := range st.cfg.Servers {
			hc := st.cfg.Check(sc)
			if hc == nil {
				continue
			}
			probe, err := health.NewProbe(*hc, st.servers[i].Addr, p.inNamespace)
			if err != nil { // a validated config has none
				p.log.Error("health check not started", "service", st.cfg.Name, "server", st.servers[i].Addr, "err", err)
				continue
			}
			targets[checkKey{svc.key, st.servers[i].Addr}] = health.Target{Check: *hc, Probe: probe}
		}
	}
	p.health.Set(targets)
	for _, svc := range p.serviceList() {
		for _, srv := range svc.state.Load().servers {
			up := true
			if s, ok := p.health.Status(checkKey{svc.key, srv.Addr}); ok {
				up = s.Up
			}
			p.applyHealth(svc, srv, up)
		}
	}
}

// healthChanged applies a server's health change reported by the monitor,
// and logs and counts it once.
func (p *Proxy) healthChanged(c health.Change[checkKey]) {
	p.control(func() error { p.applyChange(c); return nil }) // errStopped: nothing to change
}

func (p *Proxy) applyChange(c health.Change[checkKey]) {
	if !p.health.Current(c.Key, c.Gen) {
		return // a check replaced by a reload
	}
	p.svcMu.RLock()
	svc := p.services[c.Key.svc]
	p.svcMu.RUnlock()
	if svc == nil {
		return
	}
	st := svc.state.Load()
	srv := st.byAddr[c.Key.server]
	if srv == nil {
		return
	}
	quorate := st.quorate()
	p.applyHealth(svc, srv, c.Up)
	p.directorFollow(svc)
	to := "up"
	if c.Up {
		p.log.Info("real server up: passed its health check", "service", st.cfg.Name, "server", srv.Addr)
	} else {
		to = "down"
		effect := "its templates are dropped and its clients rescheduled"
		if st.cfg.InhibitOnFailure {
			effect = "weight 0 (inhibit_on_failure): it keeps its templates and takes no new clients"
		}
		p.log.Warn("real server down: failed its health check", "service", st.cfg.Name, "server", srv.Addr, "err", c.Err, "effect", effect)
	}
	p.met.IncrCounterWithLabels([]string{"server", "health_changes"}, 1, []metrics.Label{
		{Name: "service", Value: st.cfg.Name}, {Name: "server", Value: srv.Addr.String()}, {Name: "to", Value: to}})
	p.quorumChanged(svc, quorate)
}

// applyHealth sets srv's health flags: down (no clients, templates
// dropped) or, with inhibit_on_failure, inhibited (weight 0, templates
// kept). A change of weight rebuilds the scheduler.
func (p *Proxy) applyHealth(svc *service, srv *server, up bool) {
	st := svc.state.Load()
	inhibit := st.cfg.InhibitOnFailure
	oldWeight, wasDown := srv.Weight(), srv.isDown()
	if !up && !inhibit && st.persistent && svc.director { // the kernel forgets its clients before anyone sees it down
		p.table.SetServer(st.ref, srv.Addr, affinity.ServerDown)
		p.syncKernel()
	}
	srv.down.Store(!up && !inhibit)
	srv.inhibited.Store(!up && inhibit)
	p.serverChanged(svc, srv, oldWeight, wasDown)
}

// serverChanged tells the persistence table a server's new state and
// rebuilds the service's scheduler if its weight changed. A server that
// is down also loses its UDP flows: a flow has no end a server's death
// would show, and its client would go on sending into the void until it
// fell silent for the idle timeout; its next datagram is rescheduled. A
// director server that goes down (wasDown: it was not) loses its flows'
// conntrack entries with director.expire_nodest reset, as a server a
// reload removes does, so that its clients' next packets are scheduled
// anew.
func (p *Proxy) serverChanged(svc *service, srv *server, oldWeight int, wasDown bool) {
	st := svc.state.Load()
	if st.persistent {
		p.table.SetServer(st.ref, srv.Addr, tableState(srv))
	}
	if srv.Weight() != oldWeight {
		svc.state.Store(st.rescheduled())
	}
	if srv.isDown() {
		p.closeServerFlows(svc, srv)
		if !wasDown && svc.director {
			p.directorServerDown(svc, srv)
		}
	}
}

// closeServerFlows closes the UDP flows (socket-proxy and transparent) of
// svc that go to srv.
func (p *Proxy) closeServerFlows(svc *service, srv *server) {
	n := 0
	if svc.flows != nil {
		for _, f := range svc.flows.RemoveIf(func(f *flow) bool { return f.srv == srv }) {
			p.closeFlow(f, "server down")
			n++
		}
	}
	if svc.key.Mark != 0 && p.tp != nil && p.tp.uflows != nil {
		for _, f := range p.tp.uflows.RemoveIf(func(f *tflow) bool { return f.srv == srv }) {
			p.closeTFlow(f, "server down")
			n++
		}
	}
	if n > 0 {
		p.log.Info("udp flows to a server that is down closed; their clients are rescheduled", "service", svc.state.Load().cfg.Name, "server", srv.Addr, "flows", n)
	}
}

// quorumChanged logs a service going below its quorum or back above it,
// once; was is whether it was quorate before the change.
func (p *Proxy) quorumChanged(svc *service, was bool) {
	st := svc.state.Load()
	switch now := st.quorate(); {
	case was && !now:
		target := "refused"
		if st.sorry != nil {
			target = "sent to the sorry server " + st.sorry.Addr.String()
		}
		p.log.Warn("service below its quorum: new clients are "+target, "service", st.cfg.Name, "quorum", st.cfg.Quorum)
		p.hooks.Run(st.cfg.Name, st.cfg.QuorumDown, "TETHER_SERVICE="+st.cfg.Name, "TETHER_QUORUM=down")
	case !was && now:
		p.log.Info("service back at its quorum", "service", st.cfg.Name, "quorum", st.cfg.Quorum)
		p.hooks.Run(st.cfg.Name, st.cfg.QuorumUp, "TETHER_SERVICE="+st.cfg.Name, "TETHER_QUORUM=up")
	}
}

// serviceList is the services in force, in no order.
func (p *Proxy) serviceList() []*service {
	p.svcMu.RLock()
	defer p.svcMu.RUnlock()
	out := make([]*service, 0, len(p.services))
	for _, s := range p.services {
		out = append(out, s)
	}
	return out
}
