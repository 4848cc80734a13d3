package affinity

// A shard's templates live in its slot array itself: open addressing with
// linear probing, kept at most two thirds full. A lookup reads the key's
// home slot and usually nothing past it, so a hit costs one random cache
// line. Deletion shifts the following cluster back (no tombstones), so
// lookups never slow down with churn; a lease finds a template that moved
// again by key. The array doubles as templates come, up to its final
// length (capacity × 3/2), which need not be a power of two: a key's home
// is its hash scaled to the length, not masked.

// home is a key's first slot in an array of l: the high half of the hash
// scaled to the array (the low bits chose the shard).
func home(h uint64, l int) int { return int((h >> 32) * uint64(l) >> 32) }

func (sh *shard) home(h uint64) int { return home(h, len(sh.ents)) }

// get finds k's slot; h is k's hash.
func (sh *shard) get(k key, h uint64) (int32, bool) {
	if sh.n == 0 {
		return 0, false
	}
	l := len(sh.ents)
	for i := sh.home(h); ; {
		e := &sh.ents[i]
		if e.empty() {
			return 0, false
		}
		if e.is(k) {
			return int32(i), true
		}
		if i++; i == l {
			i = 0
		}
	}
}

// getGen finds the template of generation gen whose key hashes to h: a
// shard numbers its templates, so the generation names one, and it lies
// in the run of full slots from h's home, where get would find its key.
func (sh *shard) getGen(h uint64, gen uint32) (int32, bool) {
	if sh.n == 0 {
		return 0, false
	}
	l := len(sh.ents)
	for i, j := sh.home(h), 0; j < l; i, j = next(i, l), j+1 {
		e := &sh.ents[i]
		if e.empty() {
			return 0, false
		}
		if e.generation() == gen {
			return int32(i), true
		}
	}
	return 0, false
}

// place returns the empty slot a new key hashing to h goes to. The caller
// has made room (grow).
func (sh *shard) place(h uint64) int32 {
	l := len(sh.ents)
	i := sh.home(h)
	for !sh.ents[i].empty() {
		if i++; i == l {
			i = 0
		}
	}
	return int32(i)
}

// full says one more template needs a larger slot array.
func (sh *shard) full() bool { return 3*(sh.n+1) > 2*len(sh.ents) }

// maxLen is the slot array's final length: at capacity, two thirds full
// (at three quarters, a miss probed 8.5 slots on average and a miss + bind
// at the bound took a third longer; at 1 M templates the huge-page
// rounding makes both cost the same 48 B a template).
func (sh *shard) maxLen() int { return max(16, (3*sh.cap+1)/2) }

// vacate empties slot i and closes the gap: each following template of the
// cluster whose home does not lie cyclically in (gap, its slot] moves back
// into the gap.
//
// Slot i is frozen (remove); a template that moves is frozen first, so
// that no lock-free change to it is lost, and a lock-free lookup that
// misses it meanwhile takes the lock and looks again.
func (sh *shard) vacate(i int) {
	sh.ents[i].w.Store(0)
	sh.n--
	l := len(sh.ents)
	for j := next(i, l); !sh.ents[j].empty(); j = next(j, l) {
		e := &sh.ents[j]
		home := sh.home(e.key().hash(sh.seed))
		if (i < j && (home <= i || home > j)) || (i > j && home <= i && home > j) {
			e.freeze()
			e.moveTo(&sh.ents[i])
			i = j
		}
	}
}

func next(i, l int) int {
	if i++; i == l {
		return 0
	}
	return i
}

// grow doubles the slot array, up to its final length, and rehashes every
// template into it. Each template is frozen in the old array before it is
// copied, so that a lock-free change to it fails there instead of being
// lost; lookups go to the new array once it is published. An array that
// would be at least half its final length goes to the shard's region of
// the arena instead (huge.go), at its final length: its huge pages are
// resident from the first write, so the whole region costs no more, and
// the array never grows again.
func (sh *shard) grow() {
	old := sh.ents
	n := min(max(16, 2*len(old)), sh.maxLen())
	if n <= len(old) {
		n = len(old) + 1 // capacity changed under a full array: never stuck
	}
	var ents []entry
	if r := sh.region; 2*n >= len(r) && n <= len(r) {
		ents = r
	} else {
		ents = make([]entry, n)
	}
	sh.ents = ents
	for j := range old {
		if e := &old[j]; !e.empty() {
			w := e.freeze() &^ wFrozen
			sh.ents[sh.place(e.key().hash(sh.seed))].fill(e.hi.Load(), e.lo.Load(), e.meta.Load(), w)
		}
	}
	sh.slots.Store(&ents)
}
