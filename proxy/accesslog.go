package proxy

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"time"
)

// logged is what an access-log line needs of a connection or flow beyond
// its service: when it began (the zero time when the access log is off,
// so that nothing is spent on it) and the bytes from and to its client.
type logged struct {
	start   time.Time
	in, out atomic.Int64
}

// accessLogging says whether a connection starting now is logged: the
// access log is on and the sample takes it. Its zero logged start then
// says so to accessLog.
func (p *Proxy) accessLogging() time.Time {
	al := p.currentCfg().AccessLog
	if !al.Enabled || al.Sample < 1 && rand.Float64() >= al.Sample {
		return time.Time{}
	}
	return time.Now()
}

// accessLog writes the line of an ended connection or flow (proto tcp or
// udp) that accessLogging took: service, client, server (none when no
// server took it), bytes each way, duration, and how it ended.
func (p *Proxy) accessLog(st *serviceState, proto string, client, server netip.AddrPort, l *logged, end string) {
	if l.start.IsZero() {
		return
	}
	srv := ""
	if server.IsValid() {
		srv = server.String()
	}
	p.log.LogAttrs(context.Background(), slog.LevelInfo, "access",
		slog.String("service", st.cfg.Name), slog.String("proto", proto), slog.String("client", client.String()),
		slog.String("server", srv), slog.Int64("bytes_in", l.in.Load()), slog.Int64("bytes_out", l.out.Load()),
		slog.Duration("duration", time.Since(l.start)), slog.String("end", end))
}
