package proxy

import (
	"net/netip"
	"sync/atomic"
)

// rr is round robin: each available server in turn, weights ignored
// except that weight 0 takes no new clients.
type rr struct {
	servers []*Server
	next    atomic.Uint64
}

func newRR(servers []*Server) *rr { return &rr{servers: servers} }

func (r *rr) Pick(_ netip.Addr, skip []*Server) *Server {
	n := uint64(len(r.servers))
	start := r.next.Add(1)
	for i := range n {
		s := r.servers[(start+i)%n]
		if s.available() && !skipped(s, skip) {
			return s
		}
	}
	return nil
}
