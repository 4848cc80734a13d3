package affinity

import (
	"encoding/binary"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"
)

// key is a template's identity: the service's registry index and the masked
// client address in 16-byte form (IPv4 as IPv4-mapped). 20 bytes with no
// pointers, so the slot array is invisible to the GC.
type key struct {
	addr [16]byte
	svc  uint32
}

func makeKey(ref ServiceRef, masked netip.Addr) key {
	return key{addr: masked.As16(), svc: uint32(ref)}
}

func (k key) client() netip.Addr { return netip.AddrFrom16(k.addr).Unmap() }

// hash spreads keys over shards (a murmur3 finaliser over the key's words).
func (k key) hash() uint64 {
	h := binary.LittleEndian.Uint64(k.addr[:8])*0x9e3779b97f4a7c15 ^
		binary.LittleEndian.Uint64(k.addr[8:]) ^ uint64(k.svc)<<40
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// entry is one template, in its shard's slot array: 48 bytes.
//
// Idle templates (no open connection) are linked into the shard's idle list
// by slot, in stamp order: the tail is the least recently used and is
// evicted first. A template that becomes active stays where it is, so a hit
// writes only its own entry; the evictor and the sweeper unlink active
// templates they walk past, and a release relinks at the head.
type entry struct {
	key        key
	gen        uint32 // 0: an empty slot; else the template's generation
	prev, next int32  // idle list links; prev == unlinked when not in it
	server     uint32 // index into the service's servers
	active     int32  // open connections
	stamp      int64  // later of last new connection and last release
}

const (
	none     = -1
	unlinked = -2
)

type list struct{ head, tail int32 }

type shard struct {
	mu     sync.Mutex
	ents   []entry // the slot array (index.go); its length is a power of two
	n      int     // templates held
	gen    uint32  // the last generation given to a template
	idle   list
	cursor int   // where the search for an active victim resumes
	track  int32 // a slot that move follows, for a walk that removes
	cap    int
	stats  Stats
	// mapped is ents' mapping when it is off the heap (hugeSlice).
	mapped []byte
	_      [64]byte // keep the next shard's lock off this cache line
}

// init sets up an empty shard bounded at capacity templates. The slot
// array grows as templates come, so an idle table costs little.
func (sh *shard) init(capacity int) {
	sh.idle = list{none, none}
	sh.track = none
	sh.cap = capacity
}

// release unmaps the slot array if it is off the heap.
func (sh *shard) release() {
	if sh.mapped != nil {
		unix.Munmap(sh.mapped)
		sh.ents, sh.mapped = nil, nil
	}
}

func (sh *shard) unlink(i int32) {
	e := &sh.ents[i]
	if e.prev == unlinked {
		return
	}
	if e.prev != none {
		sh.ents[e.prev].next = e.next
	} else {
		sh.idle.head = e.next
	}
	if e.next != none {
		sh.ents[e.next].prev = e.prev
	} else {
		sh.idle.tail = e.prev
	}
	e.prev, e.next = unlinked, none
}

func (sh *shard) pushFront(i int32) {
	e := &sh.ents[i]
	e.prev, e.next = none, sh.idle.head
	if sh.idle.head != none {
		sh.ents[sh.idle.head].prev = i
	} else {
		sh.idle.tail = i
	}
	sh.idle.head = i
}

// open counts a new connection on template i.
func (sh *shard) open(i int32, now int64) {
	e := &sh.ents[i]
	e.active++
	e.stamp = now
}

// close counts a closed connection; the last one makes the template idle,
// the most recently used, and starts its timer.
func (sh *shard) close(i int32, now int64) {
	e := &sh.ents[i]
	e.active--
	e.stamp = now
	if e.active == 0 && sh.idle.head != i {
		sh.unlink(i)
		sh.pushFront(i)
	}
}

// idleTail drops the active templates from the tail of the idle list and
// returns the least recently used idle template, or none.
func (sh *shard) idleTail() int32 {
	for t := sh.idle.tail; t != none; t = sh.idle.tail {
		if sh.ents[t].active == 0 {
			return t
		}
		sh.unlink(t)
	}
	return none
}

// activeVictim finds a template to evict when none is idle: every
// template is active then, so the search from the cursor is short.
func (sh *shard) activeVictim() int32 {
	for range len(sh.ents) {
		sh.cursor = (sh.cursor + 1) % len(sh.ents)
		if e := &sh.ents[sh.cursor]; e.gen != 0 && e.active > 0 {
			return int32(sh.cursor)
		}
	}
	return none
}

// insert adds an idle template, making room first when the shard is full;
// h is k's hash.
func (sh *shard) insert(k key, h uint64, server uint32, now int64, r *registry) int32 {
	if sh.n >= sh.cap {
		victim := sh.idleTail()
		if victim == none {
			victim = sh.activeVictim()
		}
		e := &sh.ents[victim]
		if e.active == 0 && now-e.stamp >= r.svcs[e.key.svc].timeout {
			sh.stats.Expirations++
		} else {
			sh.stats.Evictions++
		}
		sh.remove(victim)
	}
	if sh.full() {
		sh.grow()
	}
	i := sh.place(h)
	if sh.gen++; sh.gen == 0 {
		sh.gen = 1
	}
	sh.ents[i] = entry{key: k, gen: sh.gen, server: server, stamp: now}
	sh.n++
	sh.pushFront(i)
	return i
}

// remove drops template i. Others may move to close the gap; a walk that
// goes on from some slot puts it in sh.track first.
func (sh *shard) remove(i int32) {
	sh.unlink(i)
	sh.vacate(int(i))
}

// sweep frees expired idle templates, oldest first, looking at no more than
// budget of them. The idle list is in stamp order, so the walk stops at the
// first template younger than the shortest timeout.
func (sh *shard) sweep(r *registry, now int64, budget int) int {
	n := 0
	for i := sh.idle.tail; i != none && budget > 0; budget-- {
		e := &sh.ents[i]
		prev := e.prev
		if e.active > 0 {
			sh.unlink(i)
			i = prev
			continue
		}
		age := now - e.stamp
		if age < r.minTimeout {
			break
		}
		if s := r.svcs[e.key.svc]; s.removed || age >= s.timeout {
			sh.track = prev
			sh.remove(i)
			prev, sh.track = sh.track, none
			sh.stats.Expirations++
			n++
		}
		i = prev
	}
	return n
}
