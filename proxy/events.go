package proxy

import (
	"sync"
	"sync/atomic"

	metrics "github.com/hashicorp/go-metrics"
)

// Event counters. The data path counts what happens (a connection accepted,
// a scheduling decision, a refusal, a datagram dropped) with one atomic
// add on its service's counters, and bytes and connections on its
// server's; EmitMetrics reports what each grew by since it last looked, at
// each metrics interval and before each scrape, as HAProxy's per-thread
// counters are summed when its stats are read. Through go-metrics directly
// each event built a key and rendered labels and took the sink's lock:
// 6 allocations and about a microsecond, five times a connection.

// event is a kind of service event.
type event uint8

const (
	evAccepted event = iota
	evDenied
	evRejected
	evFailed
	evClientLimited
	evBadProxyHeader
	evLocalErrors
	evScheduler
	evTemplate
	evSorry
	evUDPDropped
	evUDPDenied
	evUDPFlowsEvicted
	evUDPOnePacketDropped
	evUnclassified // the proxy's own (no service)
	evAcceptErrors // the proxy's own
	numEvents
)

// key is the event's go-metrics key.
func (e event) key() []string {
	switch e {
	case evAccepted:
		return []string{"connections", "accepted"}
	case evDenied:
		return []string{"connections", "denied"}
	case evRejected:
		return []string{"connections", "rejected"}
	case evFailed:
		return []string{"connections", "failed"}
	case evClientLimited:
		return []string{"connections", "client_limited"}
	case evBadProxyHeader:
		return []string{"connections", "bad_proxy_header"}
	case evLocalErrors:
		return []string{"connections", "local_errors"}
	case evScheduler:
		return []string{"schedule", "scheduler"}
	case evTemplate:
		return []string{"schedule", "template"}
	case evSorry:
		return []string{"schedule", "sorry"}
	case evUDPDropped:
		return []string{"udp", "dropped"}
	case evUDPDenied:
		return []string{"udp", "denied"}
	case evUDPFlowsEvicted:
		return []string{"udp", "flows_evicted"}
	case evUDPOnePacketDropped:
		return []string{"udp", "one_packet_dropped"}
	case evUnclassified:
		return []string{"connections", "unclassified"}
	case evAcceptErrors:
		return []string{"connections", "accept_errors"}
	}
	return []string{"events", "unknown"}
}

// events are one service's counters (or the proxy's own), kept across
// reloads with the service.
type events struct {
	n    [numEvents]atomic.Uint64
	sent [numEvents]uint64 // what was reported: the emitter's, under emitMu
}

func (ev *events) add(e event) { ev.n[e].Add(1) }

// addN counts n events of kind e.
func (ev *events) addN(e event, n uint64) { ev.n[e].Add(n) }

// emit reports what each counter grew by since the last call.
func (ev *events) emit(m *metrics.Metrics, labels []metrics.Label) {
	for e := range numEvents {
		if n := ev.n[e].Load(); n != ev.sent[e] {
			m.IncrCounterWithLabels(e.key(), float32(n-ev.sent[e]), labels)
			ev.sent[e] = n
		}
	}
}

// A server's counters are its own atomics (server.go), which the admin
// listing reads too; sent is what was reported of each.
type serverSent struct{ accepted, failed, bytesIn, bytesOut uint64 }

func (s *server) emit(m *metrics.Metrics, labels []metrics.Label) {
	for _, c := range []struct {
		name string
		now  uint64
		sent *uint64
	}{
		{"connections", s.accepted.Load(), &s.sent.accepted},
		{"connect_failures", s.failed.Load(), &s.sent.failed},
		{"bytes_in", s.bytesIn.Load(), &s.sent.bytesIn},
		{"bytes_out", s.bytesOut.Load(), &s.sent.bytesOut},
	} {
		if c.now != *c.sent {
			m.IncrCounterWithLabels([]string{"server", c.name}, float32(c.now-*c.sent), labels)
			*c.sent = c.now
		}
	}
}

// emitter remembers the services and servers it reported, with their
// labels, so that those a reload removed are still reported while their
// connections close (bytes are counted at the close), and then forgotten:
// it holds no more than the config and what is still draining.
type emitter struct {
	mu      sync.Mutex // one EmitMetrics at a time: the ticker's and a scrape's
	svcs    map[*events][]metrics.Label
	servers map[*server][]metrics.Label
}

// emitEvents reports every counter's growth: the proxy's own, the current
// services' and servers', and those of removed ones until they are idle.
// EmitMetrics calls it, under emit.mu.
func (p *Proxy) emitEvents(svcs []*service) {
	e := &p.emit
	if e.svcs == nil {
		e.svcs, e.servers = map[*events][]metrics.Label{}, map[*server][]metrics.Label{}
	}
	p.ev.emit(p.met, nil)
	liveSvcs, liveServers := map[*events]bool{}, map[*server]bool{}
	for _, s := range svcs {
		st := s.state.Load()
		e.svcs[st.ev] = st.labels
		liveSvcs[st.ev] = true
		for _, srv := range st.servers {
			e.servers[srv] = st.serverLabels(srv)
			liveServers[srv] = true
		}
		if st.sorry != nil {
			e.servers[st.sorry] = st.serverLabels(st.sorry)
			liveServers[st.sorry] = true
		}
	}
	for ev, l := range e.svcs {
		ev.emit(p.met, l)
		if !liveSvcs[ev] {
			delete(e.svcs, ev) // its listeners are closed: nothing more comes
		}
	}
	for srv, l := range e.servers {
		srv.emit(p.met, l)
		if !liveServers[srv] && srv.Conns() == 0 {
			delete(e.servers, srv)
		}
	}
}
