package affinity

import "golang.org/x/sys/unix"

// index maps template keys to their slab slots: open addressing with
// linear probing over uint64 slots, kept at most half full. A slot holds
// slab slot+1 in its low half (0 is empty) and 32 bits of the key's hash
// in its high half, so that a probe past another key's slot is decided in
// the slot line, without touching that key's entry (a cache miss each).
// Against a Go map it costs half the memory per template, and a lookup
// touches one slot line and then the entry, which the lookup needs
// anyway. Deletion shifts the following cluster back (no tombstones), so
// lookups never slow down with churn.
type index struct {
	slots  []uint64
	n      int
	mapped []byte // slots' mapping when they are off the heap (hugeSlice)
}

// tagged is a slot's value for slab slot i of a key hashing to h.
func tagged(h uint64, i int32) uint64 { return uint64(uint32(h))<<32 | uint64(uint32(i)+1) }

// slabSlot is the slab slot a non-empty index slot names.
func slabSlot(s uint64) int32 { return int32(uint32(s) - 1) }

// home is a key's first slot. The low bits of the hash choose the shard,
// so the index takes the high half.
func (x *index) home(h uint64) uint64 { return (h >> 32) & uint64(len(x.slots)-1) }

func (x *index) get(k key, h uint64, ents []entry) (int32, bool) {
	if x.n == 0 {
		return 0, false
	}
	m := uint64(len(x.slots) - 1)
	tag := uint64(uint32(h))
	for i := x.home(h); ; i = (i + 1) & m {
		s := x.slots[i]
		if s == 0 {
			return 0, false
		}
		if s>>32 == tag && ents[slabSlot(s)].key == k {
			return slabSlot(s), true
		}
	}
}

// put adds slot for k, which must not be in the index.
func (x *index) put(h uint64, slot int32, ents []entry) {
	if 2*(x.n+1) > len(x.slots) {
		x.grow(ents)
	}
	m := uint64(len(x.slots) - 1)
	for i := x.home(h); ; i = (i + 1) & m {
		if x.slots[i] == 0 {
			x.slots[i] = tagged(h, slot)
			x.n++
			return
		}
	}
}

// del removes k, which must be in the index, and closes the gap.
func (x *index) del(k key, h uint64, ents []entry) {
	m := uint64(len(x.slots) - 1)
	i := x.home(h)
	for ents[slabSlot(x.slots[i])].key != k {
		i = (i + 1) & m
	}
	x.slots[i] = 0
	x.n--
	for j := (i + 1) & m; x.slots[j] != 0; j = (j + 1) & m {
		s := x.slots[j]
		home := x.home(ents[slabSlot(s)].key.hash())
		// The entry at j may move to the gap at i unless its home lies
		// cyclically in (i, j].
		if (i < j && (home <= i || home > j)) || (i > j && home <= i && home > j) {
			x.slots[i], x.slots[j] = s, 0
			i = j
		}
	}
}

func (x *index) grow(ents []entry) {
	old, oldMap := x.slots, x.mapped
	n := max(16, 2*len(old))
	if slots, m := hugeSlice[uint64](n, true); m != nil {
		x.slots, x.mapped = slots[:n], m
	} else {
		x.slots, x.mapped = make([]uint64, n), nil
	}
	x.n = 0
	for _, s := range old {
		if s != 0 {
			x.put(ents[slabSlot(s)].key.hash(), slabSlot(s), ents)
		}
	}
	if oldMap != nil {
		unix.Munmap(oldMap)
	}
}

// free unmaps the slots' mapping, if any.
func (x *index) free() {
	if x.mapped != nil {
		unix.Munmap(x.mapped)
		x.slots, x.mapped = nil, nil
	}
}
