package sched

import "net/netip"

// shBuckets is IPVS's source-hashing table size.
const shBuckets = 256

// sh is source hashing: a static table of 256 buckets, filled with the
// servers in proportion to their weights; a client's address hashes to a
// bucket. When the bucket's server is unavailable the following buckets
// are tried (IPVS's sh-fallback).
type sh[S Server] struct {
	buckets [shBuckets]S
	empty   bool // no server has weight
}

func newSH[S Server](servers []S) *sh[S] {
	t := &sh[S]{}
	var live []S
	for _, s := range servers {
		if s.Weight() > 0 {
			live = append(live, s)
		}
	}
	if len(live) == 0 {
		t.empty = true
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

func (t *sh[S]) Pick(client netip.Addr, skip []S) S {
	var none S
	if t.empty {
		return none
	}
	h := hashAddr(client, 0)
	for off := range uint64(shBuckets) {
		if s := t.buckets[(h+off)%shBuckets]; usable(s, skip) {
			return s
		}
	}
	return none
}
