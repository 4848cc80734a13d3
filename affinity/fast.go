package affinity

// The lock-free hit and release. A returning client's connection and its
// close change only the template's own slot: one compare-and-swap on its
// state word (and, for the last close, one on its stamp), with no shard
// lock, so that a hit reads and writes one cache line and two CPUs' hits
// do not meet on a lock. Anything out of the ordinary goes to the locked
// path, which decides again: a template absent, expired, frozen by a lock
// holder, bound to an unusable server or at its client limit, a change a
// journal follower must hear of, or a lost race.

// Kinds of followers (Table.watched): the cluster hears of every
// service's local busy/idle changes, the director's mirror of journaled
// services' busy/idle ones.
const (
	watchAll uint32 = 1 << iota
	watchMirror
)

// quiet says that a lock-free change of a template in state w, of
// service svc, tells no follower anything: a hit (edge 0) or a release
// (edge 1) that does not take its open connections from or to zero.
func (t *Table) quiet(f uint32, w uint64, edge uint32, svc uint16) bool {
	if f == 0 {
		return true
	}
	if f&watchAll != 0 && localOf(w) == edge {
		return false
	}
	return f&watchMirror == 0 || activeOf(w) != edge || !t.reg.Load().svcs[svc].cfg.Journal
}

// hit finds k's template and counts a new connection on it, or reports
// that the locked path must decide. It returns the lease's parts, which
// fit in registers, not a Lease.
func (sh *shard) hit(t *Table, k key, h uint64, now uint32, svc *serviceInfo) (slot int32, gen uint32, server uint16, ok bool) {
	ents := *sh.slots.Load()
	l := len(ents)
	if l == 0 {
		return 0, 0, 0, false
	}
	// get's probe, without the lock: the state word first, so that
	// the key and meta read after it are what was written before it
	// (fill). A shared probe function that returned the words cost the
	// hit 25 ns (not inlined: 207-221 → 225-269 ns uniform).
	for i, j := home(h, l), 0; j < l; i, j = next(i, l), j+1 {
		e := &ents[i]
		w := e.w.Load() // first: what follows was written before it
		if w == 0 {
			return 0, 0, 0, false
		}
		if e.lo.Load() != k.lo || e.hi.Load() != k.hi {
			continue
		}
		m := e.meta.Load()
		if uint32(svcOf(m)) != k.svc {
			continue
		}
		f := t.watched.Load()
		if w&wFrozen != 0 || activeOf(w) == 0 && age(stampOf(m), now) >= svc.timeout ||
			!svc.usable(uint32(serverOf(m))) || svc.full(localOf(w)) || !t.quiet(f, w, 0, svcOf(m)) ||
			!e.w.CompareAndSwap(w, (w+1)|wRef) {
			return 0, 0, 0, false
		}
		if stampOf(m) != now {
			e.raiseStamp(now) // the last new connection (Filter.UsedBefore)
		}
		sh.hits.Add(1)
		if t.watched.Load() != f {
			sh.renote(t, h, genOf(w), now)
		}
		return int32(i), genOf(w), serverOf(m), true
	}
	return 0, 0, 0, false
}

// hitLease is a hit's Lease.
func hitLease(svc *serviceInfo, h uint64, slot int32, gen uint32, server uint16) Lease {
	return Lease{srv: &svc.servers[server], Hit: true, h: h, at: leaseAt(slot, gen)}
}

// fastRelease gives back a local lease without the lock, or reports that the
// locked path must.
func (sh *shard) fastRelease(t *Table, h uint64, slot int32, gen uint32, now uint32) bool {
	ents := *sh.slots.Load()
	if int(slot) >= len(ents) {
		return false
	}
	e := &ents[slot]
	for range 4 {
		w := e.w.Load()
		if genOf(w) != gen || w&wFrozen != 0 {
			return false // moved, gone, or being moved: the lock finds it
		}
		if localOf(w) == 0 {
			return true // released already (as the locked path: nothing to do)
		}
		f := t.watched.Load()
		if f != 0 && !t.quiet(f, w, 1, svcOf(e.meta.Load())) {
			return false
		}
		if activeOf(w) == 1 {
			// The timer starts from the last close: the stamp goes first,
			// so whoever sees the template idle sees its new stamp.
			e.raiseStamp(now)
		}
		if e.w.CompareAndSwap(w, w-1) {
			if t.watched.Load() != f {
				sh.renote(t, h, gen, now)
			}
			return true
		}
	}
	return false
}

// renote tells followers that came while a lock-free change was under
// way of the template's state now (a repeated state is harmless to them).
func (sh *shard) renote(t *Table, h uint64, gen uint32, now uint32) {
	r := t.reg.Load()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, ok := sh.getGen(h, gen)
	if !ok {
		return
	}
	e := &sh.ents[i]
	w := e.w.Load()
	kind := Idle
	if activeOf(w) > 0 {
		kind = Busy
	}
	sh.note(e, kind, now, r, toMirror)
	kind = Idle
	if localOf(w) > 0 {
		kind = Busy
	}
	sh.note(e, kind, now, r, toCluster)
}
