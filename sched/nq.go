package sched

import "net/netip"

// nq is never queue: an idle available server if there is one (the first),
// otherwise shortest expected delay.
type nq[S Server] []S

func (l nq[S]) Pick(client netip.Addr, skip []S) S {
	for _, s := range l {
		if s.Conns() == 0 && usable(s, skip) {
			return s
		}
	}
	return sed[S](l).Pick(client, skip)
}
