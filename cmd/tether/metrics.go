package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/internal/promtext"
	"github.com/tetherlb/tether/proxy"
)

// newMetrics returns the go-metrics sink tether reports to and the
// Prometheus handler of what it collects (nil when metrics are off).
func newMetrics(mc config.Metrics) (m *metrics.Metrics, h http.Handler, err error) {
	cfg := metrics.DefaultConfig("tether")
	cfg.EnableHostname, cfg.EnableHostnameLabel, cfg.EnableServiceLabel = false, false, false
	cfg.EnableRuntimeMetrics = false
	if mc.Listen == "" && !mc.Enabled {
		// Off: a sink that keeps nothing; run gives the proxy none.
		m, err := metrics.New(cfg, &metrics.BlackholeSink{})
		return m, nil, err
	}
	sink := promtext.New(promtext.Options{})
	if m, err = metrics.New(cfg, sink); err != nil {
		return nil, nil, err
	}
	return m, sink, nil
}

// emitFirst has p report its counters before h serves a scrape: the data
// path counts events on atomics that EmitMetrics reports, so without it a
// scrape would miss what happened since the last metrics interval.
func emitFirst(p *proxy.Proxy, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.EmitMetrics()
		h.ServeHTTP(w, r)
	})
}

// serveMetrics serves h at /metrics on listen (none when empty), with
// /healthz and /readyz (ready) for probes that have no admin token, as a
// Kubernetes pod's; stop ends that. The address is bound before it
// returns, so a taken port is a start-up error, not a log line.
func serveMetrics(listen string, h http.Handler, log *slog.Logger, ready *atomic.Bool) (stop func(), err error) {
	if listen == "" || h == nil {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready: listeners, rules or snapshot not in place, or stopping", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "err", err)
		}
	}()
	log.Info("metrics served", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() { srv.Close(); <-done }, nil
}
