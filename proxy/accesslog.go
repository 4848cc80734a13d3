package proxy

import (
	"net/netip"
	"time"

	"github.com/tetherlb/tether/accesslog"
)

// accessLogging is the access-log start of a connection beginning now
// (the zero time: not logged).
func (p *Proxy) accessLogging() time.Time {
	al := p.currentCfg().AccessLog
	return accesslog.Begin(al.Enabled, al.Sample)
}

// accessLog writes the line of an ended connection or flow.
func (p *Proxy) accessLog(st *serviceState, proto string, client, server netip.AddrPort, l *accesslog.Counts, end string) {
	accesslog.Write(p.log, st.cfg.Name, proto, client, server, l, end)
}
