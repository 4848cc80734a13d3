package proxy

import (
	"bufio"
	"fmt"
	"net"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/tetherlb/tether/internal/promtext"
)

// scrape is what a Prometheus scrape of sink reads after p reports, as
// series → value.
func scrape(t *testing.T, p *Proxy, sink *promtext.Sink) map[string]float64 {
	t.Helper()
	p.EmitMetrics()
	rec := httptest.NewRecorder()
	sink.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := map[string]float64{}
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("scrape: %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// The data path counts events on atomics that EmitMetrics reports: a
// scrape after it sees every connection, decision and byte exactly, and a
// server a reload removed is still reported until its last connection
// closes, its bytes included, and is then forgotten.
func TestEventCountersAtEachReport(t *testing.T) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	listen := freeAddr(t)
	yaml := func(servers ...*backend) string {
		return "services:\n" + serviceYAML("web", listen, "rr", "    persistence: {timeout: 60s}\n", servers...)
	}
	sink := promtext.New(promtext.Options{})
	m, err := metrics.New(quietMetricsConfig(), sink)
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, mustConfig(t, yaml(a, b)), Options{Metrics: m})
	idle := func() bool {
		for _, s := range p.Status() {
			for _, srv := range s.Servers {
				if srv.ActiveConns != 0 {
					return false
				}
			}
		}
		return true
	}
	// Four clients twice: the scheduler places each, then its template.
	for round := range 2 {
		for i := range 4 {
			if _, err := who(srcAddr(i), listen); err != nil {
				t.Fatalf("round %d, client %d: %v", round, i, err)
			}
		}
	}
	if !waitFor(5*time.Second, idle) {
		t.Fatal("connections still open 5 s after their clients closed")
	}
	got := scrape(t, p, sink)
	srv := func(name string, be *backend) string {
		return fmt.Sprintf(`tether_server_%s{server="%s",service="web"}`, name, be.addr)
	}
	for series, want := range map[string]float64{
		`tether_connections_accepted{service="web"}`: 8,
		`tether_schedule_scheduler{service="web"}`:   4,
		`tether_schedule_template{service="web"}`:    4,
		srv("connections", a):                        4,
		srv("connections", b):                        4,
		srv("bytes_out", a):                          8, // "a\n" each
		srv("bytes_out", b):                          8,
	} {
		if got[series] != want {
			t.Errorf("%s = %v, want %v", series, got[series], want)
		}
	}

	// A connection to b stays open while a reload removes b; its bytes
	// count when it closes.
	var c net.Conn
	for i := range 4 {
		conn, name := hold(t, srcAddr(i).String(), listen)
		if name == "b" {
			c = conn
			fmt.Fprint(conn, "ping\n")
			readLine(t, conn)
			break
		}
		conn.Close()
	}
	if c == nil {
		t.Fatal("no client of the four is b's")
	}
	p.svcMu.RLock()
	var bsrv *server
	for _, s := range p.services {
		bsrv = s.state.Load().byAddr[b.addr]
	}
	p.svcMu.RUnlock()
	if err := p.Reload(mustConfig(t, yaml(a))); err != nil {
		t.Fatal(err)
	}
	scrape(t, p, sink) // b is out of the config, its connection open
	c.Close()
	// Its count drops at the proxy's release, after the bytes are counted.
	if !waitFor(5*time.Second, func() bool { return bsrv.Conns() == 0 }) {
		t.Fatal("b's connection still open 5 s after its client closed")
	}
	got = scrape(t, p, sink)
	for series, want := range map[string]float64{
		srv("connections", b): 5,
		srv("bytes_in", b):    5,         // "ping\n"
		srv("bytes_out", b):   8 + 2 + 5, // and its name, and the echo
	} {
		if got[series] != want {
			t.Errorf("after the reload: %s = %v, want %v", series, got[series], want)
		}
	}
	p.emit.mu.Lock()
	n := len(p.emit.servers)
	p.emit.mu.Unlock()
	if n != 1 {
		t.Errorf("the reports remember %d servers, want 1 (b is gone and idle)", n)
	}
}
