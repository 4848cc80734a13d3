package cluster

import (
	"strings"
	"testing"
	"time"

	metrics "github.com/hashicorp/go-metrics"
)

// The node's counters reach go-metrics as deltas, its state as gauges.
func TestEmitMetrics(t *testing.T) {
	a := start(t, "a", nil)
	waitReady(t, a)
	(*delegate)(a.Node).NotifyMsg([]byte("garbage"))
	sink := metrics.NewInmemSink(time.Hour, time.Hour)
	conf := metrics.DefaultConfig("tether")
	conf.EnableHostname, conf.EnableRuntimeMetrics = false, false
	m, err := metrics.New(conf, sink)
	if err != nil {
		t.Fatal(err)
	}
	a.EmitMetrics(m)
	a.EmitMetrics(m) // nothing new: no second count
	data := sink.Data()
	got := map[string]float64{}
	for _, iv := range data {
		for k, c := range iv.Counters {
			got[k] += c.Sum
		}
		for k, g := range iv.Gauges {
			got[k] = float64(g.Value)
		}
	}
	for k, want := range map[string]float64{"tether.cluster.dropped": 1, "tether.cluster.ready": 1, "tether.cluster.members": 1} {
		var v float64
		var found bool
		for gk, gv := range got {
			if strings.HasPrefix(gk, k) {
				v, found = gv, true
			}
		}
		if !found || v != want {
			t.Errorf("%s = %v (found %v), want %v; all: %v", k, v, found, want, got)
		}
	}
}
