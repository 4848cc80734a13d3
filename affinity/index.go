package affinity

// index maps template keys to their slab slots: open addressing with
// linear probing over uint32 slots (slot+1; 0 is empty), kept at most half
// full. Against a Go map it costs a quarter of the memory per template,
// and a lookup touches one slot line and then the entry, which the lookup
// needs anyway. Deletion shifts the following cluster back (no
// tombstones), so lookups never slow down with churn.
type index struct {
	slots []uint32
	n     int
}

// home is a key's first slot. The low bits of the hash choose the shard,
// so the index takes the high half.
func (x *index) home(h uint64) uint64 { return (h >> 32) & uint64(len(x.slots)-1) }

func (x *index) get(k key, h uint64, ents []entry) (int32, bool) {
	if x.n == 0 {
		return 0, false
	}
	m := uint64(len(x.slots) - 1)
	for i := x.home(h); ; i = (i + 1) & m {
		s := x.slots[i]
		if s == 0 {
			return 0, false
		}
		if ents[s-1].key == k {
			return int32(s - 1), true
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
			x.slots[i] = uint32(slot) + 1
			x.n++
			return
		}
	}
}

// del removes k, which must be in the index, and closes the gap.
func (x *index) del(k key, h uint64, ents []entry) {
	m := uint64(len(x.slots) - 1)
	i := x.home(h)
	for ents[x.slots[i]-1].key != k {
		i = (i + 1) & m
	}
	x.slots[i] = 0
	x.n--
	for j := (i + 1) & m; x.slots[j] != 0; j = (j + 1) & m {
		s := x.slots[j]
		home := x.home(ents[s-1].key.hash())
		// The entry at j may move to the gap at i unless its home lies
		// cyclically in (i, j].
		if (i < j && (home <= i || home > j)) || (i > j && home <= i && home > j) {
			x.slots[i], x.slots[j] = s, 0
			i = j
		}
	}
}

func (x *index) grow(ents []entry) {
	old := x.slots
	x.slots = make([]uint32, max(16, 2*len(old)))
	x.n = 0
	for _, s := range old {
		if s != 0 {
			x.put(ents[s-1].key.hash(), int32(s-1), ents)
		}
	}
}
