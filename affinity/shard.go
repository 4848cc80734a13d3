package affinity

import (
	"encoding/binary"
	"net/netip"
	"sync"

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

// clientKey is makeKey(ref, m.Apply(client)) without building an
// address: words from one 16-byte copy, the host bits cleared in
// registers (the lookup path; see key).
func clientKey(ref ServiceRef, m Mask, client netip.Addr) key {
	if client = client.Unmap(); client.Is4() {
		b := client.As4()
		v := uint64(binary.BigEndian.Uint32(b[:]))
		return key{lo: 0xffff<<32 | v&^(1<<m.host4-1), svc: uint32(ref)}
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

// entry is one template, in its shard's slot array: 32 bytes, so that a
// slot never straddles a cache line and a hit or a release reads and
// writes that one line. There is no list: eviction samples (victim),
// and the reference bit it reads lives in the entry too. No pointers, so
// the slot array is invisible to the GC.
type entry struct {
	hi, lo uint64 // the masked client (key)
	svc    uint16 // the service's registry index
	server uint16 // index into the service's servers
	// gen is the template's generation (0: an empty slot); its top bit is
	// the reference bit: set when a client comes back (a hit).
	gen    uint32
	active uint32 // open connections: local ones, and peerUnit per peer hold
	stamp  uint32 // ticks (tick): the later of last new connection and last release
}

// refBit is gen's reference bit.
const refBit = 1 << 31

// An entry's active count holds this instance's open connections in its
// low 24 bits and the peer instances that hold it open (Adopt) above:
// the cluster hears only of local connections, or two instances would
// hold each other's templates open forever.
const (
	peerUnit  = 1 << 24
	localMask = peerUnit - 1
	maxPeers  = 1<<8 - 1
)

// local is the template's open connections through this instance.
func (e *entry) local() uint32 { return e.active & localMask }

// peers is the number of peer instances holding the template open.
func (e *entry) peers() uint32 { return e.active >> 24 }

func (e *entry) key() key { return key{hi: e.hi, lo: e.lo, svc: uint32(e.svc)} }

func (e *entry) is(k key) bool { return e.lo == k.lo && e.hi == k.hi && uint32(e.svc) == k.svc }

// addr is the masked client in 16-byte form.
func (e *entry) addr() [16]byte { return addr16(e.hi, e.lo) }

// generation is gen without the reference bit.
func (e *entry) generation() uint32 { return e.gen &^ refBit }

// age is how long the template has been idle, or since its last new
// connection, in ticks; ticks wrap after 497 days, and the subtraction
// wraps with them (timeouts are shorter: config bounds them).
func (e *entry) age(now uint32) uint32 { return now - e.stamp }

type shard struct {
	mu     sync.Mutex
	ents   []entry // the slot array (index.go)
	n      int     // templates held
	active int     // templates with open connections
	gen    uint32  // the last generation given to a template
	rnd    uint64  // the eviction sampler's state (xorshift)
	seed   uint64  // the table's hash seed
	cap    int
	stats  Stats
	// mapped is ents' mapping when it is off the heap (hugeSlice).
	mapped []byte
	jr     [maxFollowers]journal // changes for followers (journal.go)
	_      [64]byte              // keep the next shard's lock off this cache line
}

// init sets up an empty shard bounded at capacity templates. The slot
// array grows as templates come, so an idle table costs little.
func (sh *shard) init(capacity int, seed uint64) {
	sh.cap, sh.seed = capacity, seed
	sh.rnd = 0x9e3779b97f4a7c15 ^ uint64(capacity)
}

// release unmaps the slot array if it is off the heap.
func (sh *shard) release() {
	if sh.mapped != nil {
		unmapHuge(sh.mapped)
		sh.ents, sh.mapped = nil, nil
	}
}

// open counts a new connection on template i (peer: a peer instance's
// hold, Adopt). A hit (a template used again) marks it referenced; a
// template's first connection does not, so that at the bound a flood of
// new sources goes before the clients that come back.
func (sh *shard) open(i int32, now uint32, hit, peer bool, r *registry) {
	e := &sh.ents[i]
	to := uint8(0)
	if e.active == 0 {
		sh.active++
		to |= toMirror
	}
	if peer {
		e.active += peerUnit
	} else {
		if e.local() == 0 {
			to |= toCluster
		}
		e.active++
	}
	if to != 0 {
		sh.note(e, Busy, now, r, to)
	}
	e.stamp = now
	if hit {
		e.gen |= refBit
	}
}

// close counts a closed connection (peer: a peer's hold); the last one
// starts the template's timer. It writes nothing but the template's own
// slot.
func (sh *shard) close(i int32, now uint32, peer bool, r *registry) {
	e := &sh.ents[i]
	to := uint8(0)
	if peer {
		e.active -= peerUnit
	} else {
		e.active--
		if e.local() == 0 {
			to |= toCluster
		}
	}
	e.stamp = now
	if e.active == 0 {
		sh.active--
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
			if e.gen == 0 {
				continue
			}
			seen++
			rank := 1
			switch {
			case e.active > 0:
			case e.age(now) >= r.svcs[e.svc].timeout:
				rank = 4
			case e.gen&refBit == 0:
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
			if e := &sh.ents[i]; e.gen != 0 && e.active == 0 && e.gen&refBit == 0 {
				return int32(i)
			}
		}
	}
	if bestRank <= 1 {
		// Idle templates are rare here (or the windows were empty): find
		// one rather than evict a connection's, or else any template.
		start := int(sh.sample())
		for j, i := 0, start; j < l; j, i = j+1, next(i, l) {
			if e := &sh.ents[i]; e.gen != 0 && (e.active == 0 || sh.active == sh.n) {
				return int32(i)
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
		if e.active == 0 && e.age(now) >= r.svcs[e.svc].timeout {
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
	if sh.gen++; sh.gen&^refBit == 0 {
		sh.gen = 1
	}
	sh.ents[i] = entry{hi: k.hi, lo: k.lo, svc: uint16(k.svc), server: uint16(server), gen: sh.gen, stamp: now}
	sh.n++
	return i
}

// remove drops template i. Templates after it in its cluster may move back
// to close the gap (vacate), so a walk looks at slot i again.
func (sh *shard) remove(i int32, now uint32, r *registry) {
	if sh.ents[i].active > 0 {
		sh.active--
	}
	sh.note(&sh.ents[i], Dropped, now, r, toMirror|toCluster)
	sh.vacate(int(i))
}

// sweep frees the expired idle templates in the slots [from, to) and
// returns how many went.
func (sh *shard) sweep(r *registry, now uint32, from, to int) int {
	n := 0
	for j := from; j < min(to, len(sh.ents)); {
		e := &sh.ents[j]
		if e.gen != 0 && e.active == 0 {
			if s := r.svcs[e.svc]; s.removed || e.age(now) >= s.timeout {
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
