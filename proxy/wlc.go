package proxy

import "net/netip"

// wlc is weighted least connection, tether's default as IPVS's: the
// available server with the lowest connections/weight.
type wlc []*Server

func (l wlc) Pick(_ netip.Addr, skip []*Server) *Server {
	var best *Server
	var bc, bw int
	for _, s := range l {
		if !s.available() || skipped(s, skip) {
			continue
		}
		c, w := s.Conns(), s.Weight()
		// c/w < bc/bw without division.
		if best == nil || c*bw < bc*w {
			best, bc, bw = s, c, w
		}
	}
	return best
}
