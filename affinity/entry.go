package affinity

import "sync/atomic"

// entry is one template, in its shard's slot array: 32 bytes, so that a
// slot never straddles a cache line and a hit or a release reads and
// writes that one line. There is no list: eviction samples (victim),
// and the reference bit it reads lives in the entry too. No pointers, so
// the slot array is invisible to the GC.
//
// A hit and a release take no lock (fast.go): they change the state word
// w with one compare-and-swap, and a release raises the stamp in meta.
// Everything else changes under the shard's lock, which also serialises
// the writers of a slot's key, and a writer that moves or removes a
// template freezes its state word first, so that a lock-free change
// cannot slip in between (its compare-and-swap fails and it takes the
// lock). Every field is read and written atomically, for that reason.
type entry struct {
	hi, lo atomic.Uint64 // the masked client (key)
	// meta is the stamp (low 32 bits: ticks, the later of the last new
	// connection and the last release), the server (index into the
	// service's servers) and the service's registry index, 16 bits each.
	meta atomic.Uint64
	// w is the state: open connections (low 32 bits: local ones, and
	// peerUnit per peer hold), the frozen and reference bits, and the
	// template's generation above them (0: an empty slot). Lock-free
	// changes compare the whole word, so the generation says the slot
	// still holds the template they looked at.
	w atomic.Uint64
}

// The state word's bits.
const (
	wFrozen  = 1 << 32 // a lock holder is moving or removing the template
	wRef     = 1 << 33 // a client came back (a hit) since it was bound
	genShift = 34
	genMask  = 1<<(64-genShift) - 1
)

// An entry's active count holds this instance's open connections in its
// low 24 bits and the peer instances that hold it open (Adopt) above:
// the cluster hears only of local connections, or two instances would
// hold each other's templates open forever.
const (
	peerUnit  = 1 << 24
	localMask = peerUnit - 1
	maxPeers  = 1<<8 - 1
)

func activeOf(w uint64) uint32 { return uint32(w) }
func localOf(w uint64) uint32  { return uint32(w) & localMask }
func genOf(w uint64) uint32    { return uint32(w >> genShift) }

func stampOf(m uint64) uint32  { return uint32(m) }
func serverOf(m uint64) uint16 { return uint16(m >> 32) }
func svcOf(m uint64) uint16    { return uint16(m >> 48) }

func makeMeta(svc uint32, server uint32, stamp uint32) uint64 {
	return uint64(svc)<<48 | uint64(uint16(server))<<32 | uint64(stamp)
}

// empty says the slot holds no template.
func (e *entry) empty() bool { return e.w.Load() == 0 }

// active is the template's open connections, local and peer holds.
func (e *entry) active() uint32 { return activeOf(e.w.Load()) }

// local is the template's open connections through this instance.
func (e *entry) local() uint32 { return localOf(e.w.Load()) }

// peers is the number of peer instances holding the template open.
func (e *entry) peers() uint32 { return activeOf(e.w.Load()) >> 24 }

// generation is the template's generation.
func (e *entry) generation() uint32 { return genOf(e.w.Load()) }

func (e *entry) svc() uint16    { return svcOf(e.meta.Load()) }
func (e *entry) server() uint16 { return serverOf(e.meta.Load()) }
func (e *entry) stamp() uint32  { return stampOf(e.meta.Load()) }

func (e *entry) key() key { return key{hi: e.hi.Load(), lo: e.lo.Load(), svc: uint32(e.svc())} }

func (e *entry) is(k key) bool {
	return e.lo.Load() == k.lo && e.hi.Load() == k.hi && uint32(e.svc()) == k.svc
}

// addr is the masked client in 16-byte form.
func (e *entry) addr() [16]byte { return addr16(e.hi.Load(), e.lo.Load()) }

// age is how long the template has been idle, or since its last new
// connection, in ticks.
func (e *entry) age(now uint32) uint32 { return age(e.stamp(), now) }

// age is the ticks from stamp to now. Ticks wrap after 497 days, and the
// subtraction wraps with them (timeouts are shorter: config bounds them);
// a stamp after now (a release that read the clock after the caller did)
// is age 0, just used, not 497 days old.
func age(stamp, now uint32) uint32 { return uint32(max(int32(now-stamp), 0)) }

// The writers below run under the shard's lock; the lock-free hit and
// release may change w and raise the stamp meanwhile, hence the loops.

// The fields of meta.
const (
	stampBits  = 1<<32 - 1
	serverBits = 0xffff << 32
)

// setMeta replaces the bits of meta that mask selects with v's.
func (e *entry) setMeta(mask, v uint64) {
	for {
		m := e.meta.Load()
		if e.meta.CompareAndSwap(m, m&^mask|v) {
			return
		}
	}
}

// setStamp sets the stamp.
func (e *entry) setStamp(s uint32) { e.setMeta(stampBits, uint64(s)) }

// setServer binds the template to server.
func (e *entry) setServer(server uint32) { e.setMeta(serverBits, uint64(uint16(server))<<32) }

// raiseStamp sets the stamp to now unless it is later already: a
// release that read the clock before another one must not move the
// template's timer back.
func (e *entry) raiseStamp(now uint32) {
	for {
		m := e.meta.Load()
		if int32(stampOf(m)-now) >= 0 || e.meta.CompareAndSwap(m, m&^stampBits|uint64(now)) {
			return
		}
	}
}

// add changes the open connections by d (two's complement for less)
// and returns the state before.
func (e *entry) add(d uint64) uint64 { return e.w.Add(d) - d }

// reference sets the reference bit.
func (e *entry) reference() { e.w.Or(wRef) }

// fill makes an empty slot hold a template: the key and meta first, the
// state word last, so that a lock-free reader that sees the state sees
// the rest.
func (e *entry) fill(hi, lo, meta, w uint64) {
	e.hi.Store(hi)
	e.lo.Store(lo)
	e.meta.Store(meta)
	e.w.Store(w)
}

// freeze stops lock-free changes to the template and returns its state.
func (e *entry) freeze() uint64 {
	for {
		w := e.w.Load()
		if e.w.CompareAndSwap(w, w|wFrozen) {
			return w
		}
	}
}

// freezeIdle freezes the template if it has no open connections and
// reports whether it did.
func (e *entry) freezeIdle() bool {
	for {
		w := e.w.Load()
		if activeOf(w) != 0 {
			return false
		}
		if e.w.CompareAndSwap(w, w|wFrozen) {
			return true
		}
	}
}

// moveTo moves the frozen template e into the empty slot d and empties e.
func (e *entry) moveTo(d *entry) {
	d.fill(e.hi.Load(), e.lo.Load(), e.meta.Load(), e.w.Load()&^wFrozen)
	e.w.Store(0)
}

// hold is a lock holder's look at whether the template is live at now
// (open connections, or younger than timeout). An expired one is frozen
// until thaw, so that a lock-free hit that judged it live a moment before
// cannot count a connection to its old server on it while it is bound
// anew: the hit fails and retries under the lock. One that a hit made
// busy meanwhile is live.
func (e *entry) hold(now, timeout uint32) (live, held bool) {
	if e.active() > 0 || e.age(now) < timeout {
		return true, false
	}
	if e.freezeIdle() {
		return false, true
	}
	return true, false
}

// thaw ends hold's freeze. Nothing else changes a frozen state word.
func (e *entry) thaw() { e.w.Store(e.w.Load() &^ wFrozen) }
