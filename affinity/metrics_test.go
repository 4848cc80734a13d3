package affinity

import (
	"testing"
	"time"

	metrics "github.com/hashicorp/go-metrics"
)

func TestEmitMetrics(t *testing.T) {
	p := newPicker(2)
	tb, ref, clk := newTestTable(Options{}, ServiceConfig{Timeout: time.Minute}, p)
	defer tb.Close()
	sink := metrics.NewInmemSink(time.Hour, time.Hour)
	cfg := metrics.DefaultConfig("tether")
	cfg.EnableHostname, cfg.EnableRuntimeMetrics, cfg.EnableServiceLabel = false, false, false
	m, err := metrics.New(cfg, sink)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown()

	tb.Release(mustBind(t, tb, ref, client(1), p))
	tb.Release(mustBind(t, tb, ref, client(1), p))
	tb.Release(mustBind(t, tb, ref, client(2), p))
	tb.EmitMetrics(m)
	clk.Advance(time.Minute)
	tb.Sweep()
	tb.Release(mustBind(t, tb, ref, client(1), p))
	tb.EmitMetrics(m)

	data := sink.Data()
	got := map[string]int{}
	for name, c := range data[len(data)-1].Counters {
		got[name] = int(c.Sum)
	}
	want := map[string]int{
		"tether.affinity.hits": 1, "tether.affinity.misses": 3, "tether.affinity.binds": 3,
		"tether.affinity.expirations": 2,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	if g := data[len(data)-1].Gauges["tether.affinity.templates"].Value; g != 1 {
		t.Errorf("templates gauge = %v, want 1", g)
	}
}
