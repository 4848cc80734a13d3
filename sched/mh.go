package sched

import "net/netip"

// mhSize is the Maglev lookup table size: a prime far above any server
// count, so that adding a server moves close to 1/N of the clients.
const mhSize = 65537

// mh is Maglev hashing (Eisenbud et al., NSDI 2016, as IPVS's ip_vs_mh):
// every server walks its own permutation of the table, taking turns in
// proportion to its weight, until the table is full. The permutations
// depend only on the servers' addresses, so every tether instance with the
// same servers builds the same table and sends a client to the same
// server without sharing state.
type mh[S Server] struct {
	table []int32 // index into live
	live  []S     // weight above 0, in the table
}

func newMH[S Server](servers []S) *mh[S] {
	var live []S
	g := 0
	for _, s := range servers {
		if w := s.Weight(); w > 0 {
			live = append(live, s)
			g = gcd(g, w)
		}
	}
	t := &mh[S]{table: make([]int32, mhSize), live: live}
	if len(live) == 0 {
		return t
	}
	for i := range t.table {
		t.table[i] = -1
	}
	offset := make([]uint64, len(live))
	skip := make([]uint64, len(live))
	next := make([]uint64, len(live))
	turns := make([]int, len(live))
	for i, s := range live {
		offset[i] = hashAddrPort(s.Address(), 1) % mhSize
		skip[i] = hashAddrPort(s.Address(), 2)%(mhSize-1) + 1
		turns[i] = s.Weight() / g
	}
	filled := 0
	for filled < mhSize {
		for i := range live {
			for range turns[i] {
				// Next free entry of server i's permutation.
				for {
					c := (offset[i] + next[i]*skip[i]) % mhSize
					next[i]++
					if t.table[c] < 0 {
						t.table[c] = int32(i)
						filled++
						break
					}
				}
				if filled == mhSize {
					return t
				}
			}
		}
	}
	return t
}

func (t *mh[S]) Pick(client netip.Addr, skip []S) S {
	var none S
	if len(t.live) == 0 {
		return none
	}
	// The client's entry; if its server is unavailable, rehash with
	// another seed (IPVS's mh-fallback), which spreads the displaced
	// clients over the others instead of piling them on one neighbour.
	for seed := range uint64(16) {
		if s := t.live[t.table[hashAddr(client, seed+mhFallbackSeed)%mhSize]]; usable(s, skip) {
			return s
		}
	}
	// Still none: any available server.
	for _, s := range t.live {
		if usable(s, skip) {
			return s
		}
	}
	return none
}
