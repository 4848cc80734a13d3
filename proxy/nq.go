package proxy

import "net/netip"

// nq is never queue: an idle available server if there is one (the first),
// otherwise shortest expected delay.
type nq []*Server

func (l nq) Pick(client netip.Addr, skip []*Server) *Server {
	for _, s := range l {
		if s.Conns() == 0 && s.available() && !skipped(s, skip) {
			return s
		}
	}
	return sed(l).Pick(client, skip)
}
