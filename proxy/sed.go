package proxy

import "net/netip"

// sed is shortest expected delay: the available server with the lowest
// (connections+1)/weight, the delay a new connection would see.
type sed []*Server

func (l sed) Pick(_ netip.Addr, skip []*Server) *Server {
	var best *Server
	var bc, bw int
	for _, s := range l {
		if !s.available() || skipped(s, skip) {
			continue
		}
		c, w := s.Conns()+1, s.Weight()
		if best == nil || c*bw < bc*w {
			best, bc, bw = s, c, w
		}
	}
	return best
}
