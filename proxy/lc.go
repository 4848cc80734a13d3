package proxy

import "net/netip"

// lc is least connection: the available server with the fewest open
// connections; weights only matter as 0 = no new clients.
type lc []*Server

func (l lc) Pick(_ netip.Addr, skip []*Server) *Server {
	var best *Server
	var bestConns int
	for _, s := range l {
		if !s.available() || skipped(s, skip) {
			continue
		}
		if c := s.Conns(); best == nil || c < bestConns {
			best, bestConns = s, c
		}
	}
	return best
}
