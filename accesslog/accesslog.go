package accesslog

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"time"
)

// Counts is what a line needs of a connection or flow beyond its
// service: when it began (the zero time when it is not logged, so that
// nothing is spent on it) and the bytes from and to its client.
type Counts struct {
	Start   time.Time
	In, Out atomic.Int64
}

// Begin is the Start of a connection beginning now: now when the access
// log is on and the sample (0..1; 1 or more: every one) takes it, else
// the zero time.
func Begin(enabled bool, sample float64) time.Time {
	if !enabled || sample < 1 && rand.Float64() >= sample {
		return time.Time{}
	}
	return time.Now()
}

// Write logs the line of an ended connection or flow (proto tcp or udp)
// that Begin took: server is the zero AddrPort when no server took it;
// end says how it ended.
func Write(log *slog.Logger, service, proto string, client, server netip.AddrPort, c *Counts, end string) {
	if c.Start.IsZero() {
		return
	}
	srv := ""
	if server.IsValid() {
		srv = server.String()
	}
	log.LogAttrs(context.Background(), slog.LevelInfo, "access",
		slog.String("service", service), slog.String("proto", proto), slog.String("client", client.String()),
		slog.String("server", srv), slog.Int64("bytes_in", c.In.Load()), slog.Int64("bytes_out", c.Out.Load()),
		slog.Duration("duration", time.Since(c.Start)), slog.String("end", end))
}
