package sched

import "net/netip"

// lc is least connection: the available server with the fewest open
// connections; weights only matter as 0 = no new clients.
type lc[S Server] []S

func (l lc[S]) Pick(_ netip.Addr, skip []S) S {
	var best S
	var bestConns int
	found := false
	for _, s := range l {
		if !usable(s, skip) {
			continue
		}
		if c := s.Conns(); !found || c < bestConns {
			best, bestConns, found = s, c, true
		}
	}
	return best
}
