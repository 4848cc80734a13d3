package proxy

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
type mh struct {
	table []*Server
	live  []*Server // weight above 0, in the table
}

func newMH(servers []*Server) *mh {
	var live []*Server
	g := 0
	for _, s := range servers {
		if w := s.Weight(); w > 0 {
			live = append(live, s)
			g = gcd(g, w)
		}
	}
	t := &mh{table: make([]*Server, mhSize), live: live}
	if len(live) == 0 {
		return t
	}
	offset := make([]uint64, len(live))
	skip := make([]uint64, len(live))
	next := make([]uint64, len(live))
	turns := make([]int, len(live))
	for i, s := range live {
		offset[i] = hashAddrPort(s.Addr, 1) % mhSize
		skip[i] = hashAddrPort(s.Addr, 2)%(mhSize-1) + 1
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
					if t.table[c] == nil {
						t.table[c] = live[i]
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

func (t *mh) Pick(client netip.Addr, skip []*Server) *Server {
	if len(t.live) == 0 {
		return nil
	}
	// The client's entry; if its server is unavailable, rehash with
	// another seed (IPVS's mh-fallback), which spreads the displaced
	// clients over the others instead of piling them on one neighbour.
	for seed := range uint64(16) {
		s := t.table[hashAddr(client, seed+mhFallbackSeed)%mhSize]
		if s.available() && !skipped(s, skip) {
			return s
		}
	}
	// Still none: any available server.
	for _, s := range t.live {
		if s.available() && !skipped(s, skip) {
			return s
		}
	}
	return nil
}
