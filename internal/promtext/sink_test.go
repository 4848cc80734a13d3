package promtext

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	metrics "github.com/hashicorp/go-metrics"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func scrape(t *testing.T, s *Sink) string {
	t.Helper()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q", ct)
	}
	return rec.Body.String()
}

// What tether's metrics look like through go-metrics: the service name
// prefixed, labels sorted and escaped, families sorted, one HELP and TYPE
// per family, the values as the Prometheus client writes them.
func TestExposition(t *testing.T) {
	clk := &clock{time.Unix(1e9, 0)}
	s := New(Options{Now: clk.now})
	cfg := metrics.DefaultConfig("tether")
	cfg.EnableHostname, cfg.EnableHostnameLabel, cfg.EnableServiceLabel, cfg.EnableRuntimeMetrics = false, false, false, false
	m, err := metrics.New(cfg, s)
	if err != nil {
		t.Fatal(err)
	}
	web := []metrics.Label{{Name: "service", Value: "web"}}
	m.IncrCounterWithLabels([]string{"connections", "accepted"}, 1, web)
	m.IncrCounterWithLabels([]string{"connections", "accepted"}, 3, web)
	m.IncrCounterWithLabels([]string{"connections", "accepted"}, 2, []metrics.Label{{Name: "service", Value: `a "quoted"\ name`}})
	m.IncrCounterWithLabels([]string{"connections", "accepted"}, -5, web) // ignored: counters only grow
	m.SetGaugeWithLabels([]string{"server", "up"}, 1, []metrics.Label{{Name: "server", Value: "198.18.1.1:80"}, {Name: "service", Value: "web"}})
	m.SetGaugeWithLabels([]string{"server", "up"}, 0, []metrics.Label{{Name: "service", Value: "web"}, {Name: "server", Value: "198.18.1.2:80"}})
	m.SetGauge([]string{"affinity", "templates"}, 1.5e6)
	m.SetGauge([]string{"affinity", "templates"}, 1234567)
	m.EmitKey([]string{"ignored"}, 1)
	want := `# HELP tether_affinity_templates tether_affinity_templates
# TYPE tether_affinity_templates gauge
tether_affinity_templates 1.234567e+06
# HELP tether_connections_accepted tether_connections_accepted
# TYPE tether_connections_accepted counter
tether_connections_accepted{service="a \"quoted\"\\ name"} 2
tether_connections_accepted{service="web"} 4
# HELP tether_server_up tether_server_up
# TYPE tether_server_up gauge
tether_server_up{server="198.18.1.1:80",service="web"} 1
tether_server_up{server="198.18.1.2:80",service="web"} 0
`
	if got := scrape(t, s); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// A series nobody updated for the expiration leaves the output; one
// updated stays.
func TestExpiration(t *testing.T) {
	clk := &clock{time.Unix(1e9, 0)}
	s := New(Options{Now: clk.now, Expiration: time.Minute})
	s.IncrCounter([]string{"old"}, 1)
	s.IncrCounter([]string{"kept"}, 1)
	clk.t = clk.t.Add(50 * time.Second)
	s.IncrCounter([]string{"kept"}, 1)
	clk.t = clk.t.Add(20 * time.Second)
	got := scrape(t, s)
	if strings.Contains(got, "old") || !strings.Contains(got, "kept 2\n") {
		t.Errorf("after 70 s:\n%s", got)
	}
}

// The series are bounded: past MaxSeries a new label set is counted as
// dropped, and the series already held keep counting.
func TestMaxSeries(t *testing.T) {
	s := New(Options{MaxSeries: 2})
	for _, v := range []string{"a", "b", "c", "d", "a"} {
		s.IncrCounterWithLabels([]string{"conns"}, 1, []metrics.Label{{Name: "service", Value: v}})
	}
	got := scrape(t, s)
	for _, want := range []string{`conns{service="a"} 2`, `conns{service="b"} 1`, "promtext_series_dropped 2"} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	if strings.Contains(got, `service="c"`) {
		t.Errorf("a series past the bound was kept:\n%s", got)
	}
}

// A sample feeds a summary: quantiles over the last 10 s, sum and count
// over all time.
func TestSummary(t *testing.T) {
	clk := &clock{time.Unix(1e9, 0)}
	s := New(Options{Now: clk.now})
	s.AddSampleWithLabels([]string{"rtt"}, 1000, []metrics.Label{{Name: "peer", Value: "x"}}) // leaves the window
	clk.t = clk.t.Add(11 * time.Second)
	for i := 1; i <= 100; i++ {
		s.AddSampleWithLabels([]string{"rtt"}, float32(i), []metrics.Label{{Name: "peer", Value: "x"}})
	}
	want := `# HELP rtt rtt
# TYPE rtt summary
rtt{peer="x",quantile="0.5"} 51
rtt{peer="x",quantile="0.9"} 91
rtt{peer="x",quantile="0.99"} 100
rtt_sum{peer="x"} 6050
rtt_count{peer="x"} 101
`
	if got := scrape(t, s); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
