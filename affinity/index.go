package affinity

import "golang.org/x/sys/unix"

// A shard's templates live in its slot array itself: open addressing with
// linear probing, kept at most three quarters full. A lookup reads the
// key's home slot and usually nothing past it, so a hit costs one random
// cache line (two when the 48-byte entry straddles a line boundary, fetched
// together), where a separate index and slab cost two dependent ones.
// Deletion shifts the following cluster back (no tombstones), so lookups
// never slow down with churn; a template that moves takes its idle-list
// links with it (move), and a lease finds it again by key.

// home is a key's first slot. The low bits of the hash choose the shard,
// so the slot array takes the high half.
func (sh *shard) home(h uint64) int { return int(h>>32) & (len(sh.ents) - 1) }

// get finds k's slot; h is k's hash.
func (sh *shard) get(k key, h uint64) (int32, bool) {
	if sh.n == 0 {
		return 0, false
	}
	m := len(sh.ents) - 1
	for i := sh.home(h); ; i = (i + 1) & m {
		e := &sh.ents[i]
		if e.gen == 0 {
			return 0, false
		}
		if e.key == k {
			return int32(i), true
		}
	}
}

// place returns the empty slot a new key hashing to h goes to. The caller
// has made room (grow).
func (sh *shard) place(h uint64) int32 {
	m := len(sh.ents) - 1
	i := sh.home(h)
	for sh.ents[i].gen != 0 {
		i = (i + 1) & m
	}
	return int32(i)
}

// full says one more template needs a larger slot array.
func (sh *shard) full() bool { return 4*(sh.n+1) > 3*len(sh.ents) }

// vacate empties slot i, already unlinked from the idle list, and closes
// the gap: each following template of the cluster whose home does not lie
// cyclically in (gap, its slot] moves back into the gap.
func (sh *shard) vacate(i int) {
	sh.ents[i] = entry{}
	sh.n--
	m := len(sh.ents) - 1
	for j := (i + 1) & m; sh.ents[j].gen != 0; j = (j + 1) & m {
		home := sh.home(sh.ents[j].key.hash())
		if (i < j && (home <= i || home > j)) || (i > j && home <= i && home > j) {
			sh.move(j, i)
			i = j
		}
	}
}

// move puts the template at slot from into the empty slot to, and points
// its idle-list neighbours (and the tracked cursor) at its new place.
func (sh *shard) move(from, to int) {
	e := sh.ents[from]
	sh.ents[to], sh.ents[from] = e, entry{}
	t := int32(to)
	if e.prev != unlinked {
		if e.prev != none {
			sh.ents[e.prev].next = t
		} else {
			sh.idle.head = t
		}
		if e.next != none {
			sh.ents[e.next].prev = t
		} else {
			sh.idle.tail = t
		}
	}
	if sh.track == int32(from) {
		sh.track = t
	}
}

// grow doubles the slot array and rehashes every template into it,
// keeping the idle list's order. Each old slot's stamp field, no longer
// needed once its template is copied, records where the template went.
func (sh *shard) grow() {
	old, oldMap := sh.ents, sh.mapped
	n := max(16, 2*len(old))
	if ents, m := hugeSlice[entry](n); m != nil {
		sh.ents, sh.mapped = ents, m
	} else {
		sh.ents, sh.mapped = make([]entry, n), nil
	}
	for j := range old {
		if old[j].gen != 0 {
			i := sh.place(old[j].key.hash())
			sh.ents[i] = old[j]
			old[j].stamp = int64(i)
		}
	}
	at := func(s int32) int32 {
		if s < 0 {
			return s // none or unlinked
		}
		return int32(old[s].stamp)
	}
	for i := range sh.ents {
		if e := &sh.ents[i]; e.gen != 0 && e.prev != unlinked {
			e.prev, e.next = at(e.prev), at(e.next)
		}
	}
	sh.idle.head, sh.idle.tail, sh.track = at(sh.idle.head), at(sh.idle.tail), at(sh.track)
	sh.cursor = 0
	if oldMap != nil {
		unix.Munmap(oldMap)
	}
}
