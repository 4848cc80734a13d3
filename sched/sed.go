package sched

import "net/netip"

// sed is shortest expected delay: the available server with the lowest
// (connections+1)/weight, the delay a new connection would see.
type sed[S Server] []S

func (l sed[S]) Pick(_ netip.Addr, skip []S) S { return leastPerWeight(l, skip, 1) }
