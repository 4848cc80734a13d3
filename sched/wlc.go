package sched

import "net/netip"

// wlc is weighted least connection, tether's default as IPVS's: the
// available server with the lowest connections/weight.
type wlc[S Server] []S

func (l wlc[S]) Pick(_ netip.Addr, skip []S) S { return leastPerWeight(l, skip, 0) }

// leastPerWeight picks the available server with the lowest
// (connections + extra) / weight, compared without division; the first
// wins a tie, as in IPVS.
func leastPerWeight[S Server](l []S, skip []S, extra int) S {
	var best S
	var bc, bw int
	found := false
	for _, s := range l {
		if !usable(s, skip) {
			continue
		}
		c, w := s.Conns()+extra, s.Weight()
		if !found || c*bw < bc*w {
			best, bc, bw, found = s, c, w, true
		}
	}
	return best
}
