package affinity

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/tetherlb/tether/internal/fmix"
)

// key is a template's identity: the service's registry index and the masked
// client address in 16-byte form (IPv4 as IPv4-mapped) as two big-endian
// words. Words, not a [16]byte: a struct of words lives in registers, where
// an array is copied through the stack, and a hash that read 8 bytes from
// the middle of a 16-byte store waited for that store to retire (the CPU
// cannot forward it), which made every lookup wait for the one before:
// 207 ns against 35 ns for a slot load, measured.
type key struct {
	hi, lo uint64
	svc    uint32
}

func makeKey(ref ServiceRef, masked netip.Addr) key {
	b := masked.As16()
	return key{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:]), svc: uint32(ref)}
}

// key4 is clientKey of an IPv4 client's address b, small enough to
// inline into GetOrBind.
func key4(ref ServiceRef, m Mask, b [4]byte) key {
	v := uint64(binary.BigEndian.Uint32(b[:]))
	return key{lo: 0xffff<<32 | v&^(1<<m.host4-1), svc: uint32(ref)}
}

// clientKey is makeKey(ref, m.Apply(client)) without building an
// address: words from one 16-byte copy, the host bits cleared in
// registers (the lookup path; see key).
func clientKey(ref ServiceRef, m Mask, client netip.Addr) key {
	if client = client.Unmap(); client.Is4() {
		return key4(ref, m, client.As4())
	}
	b := client.As16() // a zone is dropped
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	if m.host6 >= 64 {
		hi &^= 1<<(m.host6-64) - 1 // 1<<64 is 0 in Go: all of hi at /0
		lo = 0
	} else {
		lo &^= 1<<m.host6 - 1
	}
	return key{hi: hi, lo: lo, svc: uint32(ref)}
}

// addr16 is the address words hi, lo in 16-byte form.
func addr16(hi, lo uint64) [16]byte {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
	return b
}

func (k key) client() netip.Addr { return netip.AddrFrom16(addr16(k.hi, k.lo)).Unmap() }

// hash spreads keys over shards (a murmur3 finaliser over the key's words
// and the table's seed). The seed is random per table: a table filled in
// another one's slot order (a peer's full state, a handover) with the same
// hash would put every key at the end of one cluster, and linear probing
// would go quadratic (a million templates took 27 s to merge).
func (k key) hash(seed uint64) uint64 {
	return fmix.Mix64((k.hi^seed)*0x9e3779b97f4a7c15 ^ k.lo ^ uint64(k.svc)<<40)
}

type shard struct {
	// Read by lock-free hits and releases; written by growth only.
	slots atomic.Pointer[[]entry] // the slot array, as ents
	seed  uint64                  // the table's hash seed
	_     [48]byte
	hits  atomic.Uint64 // hits, counted outside the lock
	_     [56]byte

	mu   sync.Mutex
	ents []entry // the slot array (index.go)
	n    int     // templates held
	gen  uint32  // the last generation given to a template
	rnd  uint64  // the eviction sampler's state (xorshift)
	cap  int
	// stats are the counters kept under the lock (Hits is in hits).
	stats Stats
	// region is the shard's part of the table's arena (huge.go), as long
	// as its final array; nil: the array lives on the heap.
	region []entry
	jr     [maxFollowers]journal // changes for followers (journal.go)
	_      [64]byte              // keep the next shard's lock off this cache line
}

// init sets up an empty shard bounded at capacity templates. The slot
// array grows as templates come, so an idle table costs little.
func (sh *shard) init(capacity int, seed uint64) {
	sh.cap, sh.seed = capacity, seed
	sh.rnd = 0x9e3779b97f4a7c15 ^ uint64(capacity)
	sh.slots.Store(new([]entry))
}

// release drops the slot array, before the table's arena is unmapped.
func (sh *shard) release() {
	sh.ents, sh.region = nil, nil
	sh.slots.Store(new([]entry))
}

// open counts a new connection on template i (peer: a peer instance's
// hold, Adopt). A hit (a template used again) marks it referenced; a
// template's first connection does not, so that at the bound a flood of
// new sources goes before the clients that come back.
func (sh *shard) open(i int32, now uint32, hit, peer bool, r *registry) {
	e := &sh.ents[i]
	d := uint64(1)
	if peer {
		d = peerUnit
	}
	e.raiseStamp(now)
	if hit {
		e.reference()
	}
	old := e.add(d)
	to := uint8(0)
	if activeOf(old) == 0 {
		to |= toMirror
	}
	if !peer && localOf(old) == 0 {
		to |= toCluster
	}
	if to != 0 {
		sh.note(e, Busy, now, r, to)
	}
}

// close counts a closed connection (peer: a peer's hold); the last one
// starts the template's timer. It writes nothing but the template's own
// slot. The stamp goes first: whoever sees the template idle sees it.
func (sh *shard) close(i int32, now uint32, peer bool, r *registry) {
	e := &sh.ents[i]
	d := uint64(1)
	if peer {
		d = peerUnit
	}
	e.raiseStamp(now)
	old := e.add(-d)
	to := uint8(0)
	if !peer && localOf(old) == 1 {
		to |= toCluster
	}
	if activeOf(old) == uint32(d) {
		to |= toMirror
	}
	if to != 0 {
		sh.note(e, Idle, now, r, to)
	}
}

// victim chooses the template to evict at the bound, by sampling (as
// Redis approximates LRU) a window of templates at a random place, ranked:
// an expired idle one first; then an idle one no client came back to since
// it was bound; then an idle one a client came back to (its reference bit:
// a flood of new sources goes before the clients that return); then one
// with open connections; the oldest within a rank. A window of
// evictSamples templates (empty slots skipped, so that a run of empty
// slots is no empty sample) without an idle template of the first two
// ranks is followed by up to two more, then by a bounded scan for one.
// Eviction at random places keeps linear probing's clusters short, where
// evicting in slot order (a clock hand) merges them. With no idle template
// sampled but some in the shard, a scan finds one.
func (sh *shard) victim(now uint32, r *registry) int32 {
	best, bestRank := int32(none), -1
	l := len(sh.ents)
	samples, rounds := evictSamples, 3
	if l <= smallShard { // look at every template: exact, and as cheap
		samples, rounds = l, 1
	}
	for round := 0; round < rounds && bestRank < 3; round++ {
		// A window of consecutive slots from a random place: keys in
		// neighbouring slots are unrelated, and neighbouring lines come
		// from memory together.
		i := int32(0)
		if samples != l {
			i = sh.sample()
		}
		for j, seen := 0, 0; seen < samples && j < l; j, i = j+1, int32(next(int(i), l)) {
			e := &sh.ents[i]
			w := e.w.Load()
			if w == 0 {
				continue
			}
			seen++
			rank := 1
			switch {
			case activeOf(w) > 0:
			case e.age(now) >= r.svcs[e.svc()].timeout:
				rank = 4
			case w&wRef == 0:
				rank = 3
			default:
				rank = 2
			}
			if rank > bestRank || rank == bestRank && e.age(now) > sh.ents[best].age(now) {
				best, bestRank = i, rank
			}
		}
	}
	if bestRank < 3 {
		// Every idle template sampled was one a client came back to: look
		// further for one nobody came back to (evictions thin a region of
		// new sources, so returning clients gather where windows look).
		start := int(best)
		if best == none {
			start = int(sh.sample())
		}
		for j, i := 0, start; j < maxScan && j < l; j, i = j+1, next(i, l) {
			if w := sh.ents[i].w.Load(); w != 0 && activeOf(w) == 0 && w&wRef == 0 {
				return int32(i)
			}
		}
	}
	if bestRank <= 1 {
		// Idle templates are rare here (or the windows were empty): find
		// one rather than evict a connection's, or else any template.
		start := int(sh.sample())
		for j, i := 0, start; j < l; j, i = j+1, next(i, l) {
			if w := sh.ents[i].w.Load(); w != 0 {
				if activeOf(w) == 0 {
					return int32(i)
				}
				if best == none {
					best = int32(i)
				}
			}
		}
	}
	return best
}

// evictSamples is the window of templates a victim is chosen from (about
// six cache lines), and smallShard the slot array up to which
// every template is looked at instead.
const (
	evictSamples = 8
	maxScan      = 256 // bounds the look for a template nobody came back to
	smallShard   = 64
)

// sample is a random slot.
func (sh *shard) sample() int32 {
	// xorshift64*: cheap, and good enough to spread evictions.
	sh.rnd ^= sh.rnd >> 12
	sh.rnd ^= sh.rnd << 25
	sh.rnd ^= sh.rnd >> 27
	r := sh.rnd * 0x2545f4914f6cdd1d
	return int32((r >> 32) * uint64(len(sh.ents)) >> 32)
}

const none = -1

// insert adds an idle template, making room first when the shard is full;
// h is k's hash. A new template is not referenced: a flood of new sources
// goes before the clients that come back.
func (sh *shard) insert(k key, h uint64, server uint32, now uint32, r *registry) int32 {
	if sh.n >= sh.cap {
		victim := sh.victim(now, r)
		e := &sh.ents[victim]
		// A hit may make the victim busy meanwhile: it goes all the same
		// (its connection's release then finds nothing), as the choice
		// of a busy victim would.
		w := e.freeze()
		if activeOf(w) == 0 && e.age(now) >= r.svcs[e.svc()].timeout {
			sh.stats.Expirations++
		} else {
			sh.stats.Evictions++
		}
		sh.remove(victim, now, r)
	}
	if sh.full() {
		sh.grow()
	}
	i := sh.place(h)
	if sh.gen = (sh.gen + 1) & genMask; sh.gen == 0 {
		sh.gen = 1
	}
	sh.ents[i].fill(k.hi, k.lo, makeMeta(k.svc, server, now), uint64(sh.gen)<<genShift)
	sh.n++
	return i
}

// remove drops template i, which the caller may have frozen already.
// Templates after it in its cluster may move back to close the gap
// (vacate), so a walk looks at slot i again.
func (sh *shard) remove(i int32, now uint32, r *registry) {
	sh.ents[i].freeze()
	sh.note(&sh.ents[i], Dropped, now, r, toMirror|toCluster)
	sh.vacate(int(i))
}

// sweep frees the expired idle templates in the slots [from, to) and
// returns how many went.
func (sh *shard) sweep(r *registry, now uint32, from, to int) int {
	n := 0
	for j := from; j < min(to, len(sh.ents)); {
		e := &sh.ents[j]
		if w := e.w.Load(); w != 0 && activeOf(w) == 0 {
			// Frozen only if still idle: a hit may come meanwhile.
			if s := r.svcs[e.svc()]; (s.removed || e.age(now) >= s.timeout) && e.freezeIdle() {
				sh.remove(int32(j), now, r) // the gap may be filled from further on: look again
				sh.stats.Expirations++
				n++
				continue
			}
		}
		j++
	}
	return n
}
