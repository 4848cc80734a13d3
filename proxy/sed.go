package proxy

import "net/netip"

// sed is shortest expected delay: the available server with the lowest
// (connections+1)/weight, the delay a new connection would see.
type sed []*Server

func (l sed) Pick(_ netip.Addr, skip []*Server) *Server { return leastPerWeight(l, skip, 1) }
