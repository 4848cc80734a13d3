package sched

import (
	"net/netip"
	"sync/atomic"
)

// rr is round robin: each available server in turn, weights ignored
// except that weight 0 takes no new clients.
type rr[S Server] struct {
	servers []S
	next    atomic.Uint64
}

func newRR[S Server](servers []S) *rr[S] { return &rr[S]{servers: servers} }

func (r *rr[S]) Pick(_ netip.Addr, skip []S) S {
	n := uint64(len(r.servers))
	start := r.next.Add(1)
	for i := range n {
		if s := r.servers[(start+i)%n]; usable(s, skip) {
			return s
		}
	}
	var none S
	return none
}
