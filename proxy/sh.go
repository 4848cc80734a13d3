package proxy

import "net/netip"

// shBuckets is IPVS's source-hashing table size.
const shBuckets = 256

// sh is source hashing: a static table of 256 buckets, filled with the
// servers in proportion to their weights; a client's address hashes to a
// bucket. When the bucket's server is unavailable the following buckets
// are tried (IPVS's sh-fallback).
type sh struct{ buckets [shBuckets]*Server }

func newSH(servers []*Server) *sh {
	t := &sh{}
	var live []*Server
	for _, s := range servers {
		if s.Weight() > 0 {
			live = append(live, s)
		}
	}
	if len(live) == 0 {
		return t
	}
	// As IPVS: each server takes as many consecutive buckets as its weight,
	// in turn, until the table is full.
	i, left := 0, live[0].Weight()
	for b := range t.buckets {
		t.buckets[b] = live[i]
		if left--; left <= 0 {
			i = (i + 1) % len(live)
			left = live[i].Weight()
		}
	}
	return t
}

func (t *sh) Pick(client netip.Addr, skip []*Server) *Server {
	if t.buckets[0] == nil {
		return nil
	}
	h := hashAddr(client, 0)
	for off := range uint64(shBuckets) {
		s := t.buckets[(h+off)%shBuckets]
		if s.available() && !skipped(s, skip) {
			return s
		}
	}
	return nil
}
