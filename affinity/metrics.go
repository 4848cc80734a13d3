package affinity

import (
	metrics "github.com/hashicorp/go-metrics"
)

// metricsPrefix names the table's metrics: affinity.hits, affinity.templates...
const metricsPrefix = "affinity"

// EmitMetrics reports the counters that grew since the last call as
// go-metrics counters, and the template count as a gauge. The counters are
// kept per shard under the shard's lock, so lookups never touch a shared
// cache line for them; the owner of the table calls this periodically
// (the proxy does, on its metrics interval).
func (t *Table) EmitMetrics(m *metrics.Metrics, labels ...metrics.Label) {
	s := t.Stats()
	t.emitMu.Lock()
	last := t.lastEmit
	t.lastEmit = s
	t.emitMu.Unlock()
	for _, c := range []struct {
		name     string
		now, was uint64
	}{
		{"hits", s.Hits, last.Hits},
		{"misses", s.Misses, last.Misses},
		{"binds", s.Binds, last.Binds},
		{"expirations", s.Expirations, last.Expirations},
		{"evictions", s.Evictions, last.Evictions},
		{"invalidations", s.Invalidations, last.Invalidations},
		{"client_limited", s.ClientLimited, last.ClientLimited},
	} {
		if c.now > c.was {
			m.IncrCounterWithLabels([]string{metricsPrefix, c.name}, float32(c.now-c.was), labels)
		}
	}
	m.SetGaugeWithLabels([]string{metricsPrefix, "templates"}, float32(s.Templates), labels)
}
