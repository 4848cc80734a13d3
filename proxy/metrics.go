package proxy

import (
	metrics "github.com/hashicorp/go-metrics"
	"github.com/tetherlb/tether/udpbatch"
)

// EmitMetrics sets the gauges that are states rather than events (open
// connections per service and server, weights) and reports what the event
// counters (events.go) and the persistence table's counters grew by. The
// owner calls it on its metrics interval and before each scrape, so that
// a scrape sees every event counted until then.
func (p *Proxy) EmitMetrics() {
	p.svcMu.RLock()
	svcs := make([]*service, 0, len(p.services))
	for _, s := range p.services {
		svcs = append(svcs, s)
	}
	p.svcMu.RUnlock()
	for _, s := range svcs {
		st := s.state.Load()
		l := []metrics.Label{{Name: "service", Value: st.cfg.Name}}
		p.met.SetGaugeWithLabels([]string{"connections", "active"}, float32(s.active.Load()), l)
		for _, srv := range st.servers {
			sl := append(l[:1:1], metrics.Label{Name: "server", Value: srv.Addr.String()})
			p.met.SetGaugeWithLabels([]string{"server", "active"}, float32(srv.Conns()), sl)
			p.met.SetGaugeWithLabels([]string{"server", "weight"}, float32(srv.Weight()), sl)
			up := float32(1)
			if srv.isDown() || srv.inhibited.Load() {
				up = 0
			}
			p.met.SetGaugeWithLabels([]string{"server", "up"}, up, sl)
		}
		q := float32(0)
		if st.quorate() {
			q = 1
		}
		p.met.SetGaugeWithLabels([]string{"service", "quorum"}, q, l)
		if s.rc != nil {
			if n, err := udpbatch.Drops(s.rc); err == nil {
				p.met.SetGaugeWithLabels([]string{"udp", "kernel_drops"}, float32(n), l)
			}
		}
	}
	p.emitDirectorMetrics()
	// The counters one report at a time, the ticker's or a scrape's: each
	// report is a counter's growth since the one before.
	p.emit.mu.Lock()
	defer p.emit.mu.Unlock()
	if p.metricsOn {
		p.emitEvents(svcs)
	}
	p.table.EmitMetrics(p.met)
	if n := p.clusterNode(); n != nil {
		n.EmitMetrics(p.met)
	}
}
