package cluster

import (
	metrics "github.com/hashicorp/go-metrics"
)

// EmitMetrics reports the counters that grew since the last call
// (cluster.queued, received, dropped, pruned, lost, merges) and the
// gauges: queue depth, peers' holds, members, the last merge's seconds,
// readiness. The owner calls it on its metrics interval.
func (n *Node) EmitMetrics(m *metrics.Metrics) {
	s := n.Stats()
	n.mu.Lock()
	last := n.lastEmit
	n.lastEmit = s
	n.mu.Unlock()
	for _, c := range []struct {
		name     string
		now, was uint64
	}{
		{"queued", s.Queued, last.Queued},
		{"sent", s.Sent, last.Sent},
		{"send_errors", s.SendErrors, last.SendErrors},
		{"received", s.Received, last.Received},
		{"dropped", s.Dropped, last.Dropped},
		{"pruned", s.Pruned, last.Pruned},
		{"lost", s.Lost, last.Lost},
		{"merges", s.Merges, last.Merges},
	} {
		if c.now > c.was {
			m.IncrCounter([]string{"cluster", c.name}, float32(c.now-c.was))
		}
	}
	ready := float32(0)
	if s.Ready {
		ready = 1
	}
	m.SetGauge([]string{"cluster", "queue_depth"}, float32(s.QueueDepth))
	m.SetGauge([]string{"cluster", "holds"}, float32(s.Holds))
	m.SetGauge([]string{"cluster", "members"}, float32(n.ml.NumMembers()))
	m.SetGauge([]string{"cluster", "merge_seconds"}, float32(s.MergeTime.Seconds()))
	m.SetGauge([]string{"cluster", "ready"}, ready)
}
