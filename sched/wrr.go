package sched

import (
	"net/netip"
	"sync"
)

// wrr is IPVS's weighted round robin: servers in turn, each as often as its
// weight, interleaved (weights 4,3,2 give a a b a b c a b c).
type wrr[S Server] struct {
	mu      sync.Mutex
	servers []S
	i, cw   int // current index and current weight
	mw, di  int // max weight and gcd of the weights
}

func newWRR[S Server](servers []S) *wrr[S] {
	w := &wrr[S]{servers: servers, i: -1}
	for _, s := range servers {
		if wt := s.Weight(); wt > 0 {
			w.mw = max(w.mw, wt)
			w.di = gcd(w.di, wt)
		}
	}
	return w
}

func (w *wrr[S]) Pick(_ netip.Addr, skip []S) S {
	var none S
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(w.servers)
	if n == 0 || w.mw == 0 {
		return none
	}
	// One full cycle of the sequence is n × mw/di steps; past it every
	// server was looked at and none fits.
	for range n*(w.mw/w.di) + 1 {
		w.i = (w.i + 1) % n
		if w.i == 0 {
			w.cw -= w.di
			if w.cw <= 0 {
				w.cw = w.mw
			}
		}
		if s := w.servers[w.i]; s.Weight() >= w.cw && usable(s, skip) {
			return s
		}
	}
	return none
}
