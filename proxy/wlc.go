package proxy

import "net/netip"

// wlc is weighted least connection, tether's default as IPVS's: the
// available server with the lowest connections/weight.
type wlc []*Server

func (l wlc) Pick(_ netip.Addr, skip []*Server) *Server { return leastPerWeight(l, skip, 0) }

// leastPerWeight picks the available server with the lowest
// (connections + extra) / weight, compared without division; the first
// wins a tie, as in IPVS.
func leastPerWeight(l []*Server, skip []*Server, extra int) *Server {
	var best *Server
	var bc, bw int
	for _, s := range l {
		if !s.available() || skipped(s, skip) {
			continue
		}
		c, w := s.Conns()+extra, s.Weight()
		if best == nil || c*bw < bc*w {
			best, bc, bw = s, c, w
		}
	}
	return best
}
