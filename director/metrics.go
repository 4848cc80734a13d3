package director

import (
	"strconv"

	metrics "github.com/hashicorp/go-metrics"
)

// EmitMetrics sets the director's counters as gauges on m
// (tether_director_*), and the kernel's counts per queue from
// /proc/net/netfilter/nfnetlink_queue, read through do in the director's
// network namespace.
func (d *Director[H]) EmitMetrics(m *metrics.Metrics, do func(func() error) error) {
	s := d.Stats()
	for _, c := range []struct {
		name string
		v    uint64
	}{
		{"verdicts", s.Verdicts}, {"adopted", s.Adopted}, {"queue_errors", s.QueueErrors}, {"unparsed", s.Unparsed}, {"unknown", s.Unknown}, {"no_server", s.NoServer}, {"denied", s.Denied},
		{"verdict_errors", s.VerdictErrors}, {"overruns", s.Overruns}, {"flows_ended", s.FlowsEnded}, {"flows_reconciled", s.Reconciled},
		{"seen", s.Seen}, {"conntrack_scans", s.Scans}, {"conntrack_scan_entries", s.ScanEntries},
	} {
		m.SetGauge([]string{"director", c.name}, float32(c.v))
	}
	m.SetGauge([]string{"director", "flows"}, float32(s.Flows))
	m.SetGauge([]string{"director", "conntrack_scan_seconds"}, float32(s.ScanTime.Seconds()))
	m.SetGauge([]string{"director", "conntrack_scan_cpu_seconds"}, float32(s.ScanCPU.Seconds()))
	// queue_dropped: for a full queue; user_dropped: for a full socket
	// buffer.
	for _, q := range ReadQueueStats(do) {
		l := []metrics.Label{{Name: "queue", Value: strconv.Itoa(int(q.Num))}}
		m.SetGaugeWithLabels([]string{"director", "queue_dropped"}, float32(q.QueueDropped), l)
		m.SetGaugeWithLabels([]string{"director", "user_dropped"}, float32(q.UserDropped), l)
		m.SetGaugeWithLabels([]string{"director", "queue_length"}, float32(q.Waiting), l)
	}
}
