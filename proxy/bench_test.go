package proxy

import (
	"io"
	"log/slog"
	"net"
	"testing"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/tetherlb/tether/internal/promtext"
)

// BenchmarkConnection is one short connection through the socket proxy on
// loopback, the server answering a byte and closing: the per-connection
// cost tether adds (accept, schedule, dial, splice, close), against
// BenchmarkConnectionDirect in the same run. Both include the kernel's
// loopback TCP work, which dominates.
func BenchmarkConnection(b *testing.B) {
	backend := oneByteServer(b)
	listen := freeAddr(b)
	startProxy(b, mustConfig(b, "services:\n  - name: s\n    listen: "+listen+"\n    servers: [{address: "+backend+"}]\n"), Options{})
	benchConnect(b, listen)
}

// BenchmarkConnectionMetrics is BenchmarkConnection with metrics on, to
// the Prometheus text sink: what counting a connection's events costs is
// the difference, in the same run (allocations included: the proxy runs
// in the benchmark's process).
func BenchmarkConnectionMetrics(b *testing.B) {
	backend := oneByteServer(b)
	listen := freeAddr(b)
	m, err := metrics.New(quietMetricsConfig(), promtext.New(promtext.Options{}))
	if err != nil {
		b.Fatal(err)
	}
	startProxy(b, mustConfig(b, "services:\n  - name: s\n    listen: "+listen+"\n    servers: [{address: "+backend+"}]\n"), Options{Metrics: m})
	benchConnect(b, listen)
}

// BenchmarkConnectionDirect is the same connection straight to the server.
// BenchmarkConnectionAccessLog is BenchmarkConnection with the access log
// on, every connection logged as JSON (to a handler that discards it): the
// log's cost is the difference, in the same run.
func BenchmarkConnectionAccessLog(b *testing.B) {
	backend := oneByteServer(b)
	listen := freeAddr(b)
	startProxy(b, mustConfig(b, "access_log: {enabled: true}\nservices:\n  - name: s\n    listen: "+listen+"\n    servers: [{address: "+backend+"}]\n"),
		Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	benchConnect(b, listen)
}

func BenchmarkConnectionDirect(b *testing.B) {
	benchConnect(b, oneByteServer(b))
}

func benchConnect(b *testing.B, addr string) {
	buf := make([]byte, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// oneByteServer writes one byte to each connection and closes it.
func oneByteServer(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte{1})
			c.Close()
		}
	}()
	return ln.Addr().String()
}
