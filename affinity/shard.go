package affinity

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hugeAdvise is the slab size from which a shard asks for huge pages.
const hugeAdvise = 2 << 20

// key is a template's identity: the service's registry index and the masked
// client address in 16-byte form (IPv4 as IPv4-mapped). 20 bytes with no
// pointers, so the index map and the slab are invisible to the GC.
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

// entry is one template in a shard's slab: 48 bytes.
//
// Idle templates (no open connection) are linked into the shard's idle list
// by slab index, in stamp order: the tail is the least recently used and is
// evicted first. A template that becomes active stays where it is, so a hit
// writes only its own entry; the evictor and the sweeper unlink active
// templates they walk past, and a release relinks at the head.
type entry struct {
	key        key
	gen        uint32 // bumped when the slot is freed, so stale leases miss
	prev, next int32  // idle list links; prev == unlinked when not in it
	server     uint32 // index into the service's servers
	active     int32  // open connections; -1 marks a free slot
	stamp      int64  // later of last new connection and last release
}

const (
	none     = -1
	unlinked = -2
)

type list struct{ head, tail int32 }

type shard struct {
	mu     sync.Mutex
	index  index
	ents   []entry
	free   int32
	idle   list
	cursor int // where the search for an active victim resumes
	cap    int
	stats  Stats
	// slabMap is ents' mapping when it is off the heap (hugeSlice).
	slabMap []byte
	_       [64]byte // keep the next shard's lock off this cache line
}

// init sets up an empty shard for capacity templates. Its slab takes its
// final size at once, off the heap when it is large (hugeSlice), and never
// moves; the index grows as templates come. The slab asks for huge pages
// only once it holds hugeAdvise bytes of templates, so that a nearly empty
// table does not hold a 2 MB page per shard.
func (sh *shard) init(capacity int) {
	sh.free = none
	sh.idle = list{none, none}
	sh.cap = capacity
	if ents, m := hugeSlice[entry](capacity, false); m != nil {
		sh.ents, sh.slabMap = ents, m
	} else {
		sh.ents = make([]entry, 0, capacity)
	}
}

// release unmaps what init and the index mapped.
func (sh *shard) release() {
	if sh.slabMap != nil {
		unix.Munmap(sh.slabMap)
		sh.ents, sh.slabMap = nil, nil
	}
	sh.index.free()
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

// activeVictim finds a template to evict when none is idle: every live slot
// is active then, so the search from the cursor is short.
func (sh *shard) activeVictim() int32 {
	for range len(sh.ents) {
		sh.cursor = (sh.cursor + 1) % len(sh.ents)
		if sh.ents[sh.cursor].active > 0 {
			return int32(sh.cursor)
		}
	}
	return none
}

// insert adds an idle template, making room first when the shard is full;
// h is k's hash.
func (sh *shard) insert(k key, h uint64, server uint32, now int64, r *registry) int32 {
	if sh.index.n >= sh.cap {
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
	i := sh.free
	if i != none {
		sh.free = sh.ents[i].next
	} else {
		sh.ents = append(sh.ents, entry{})
		i = int32(len(sh.ents) - 1)
		if sh.slabMap != nil && len(sh.ents) == hugeAdvise/int(unsafe.Sizeof(entry{})) {
			adviseHuge(sh.slabMap, hugeAdvise)
		}
	}
	e := &sh.ents[i]
	e.key, e.server, e.active, e.stamp = k, server, 0, now
	sh.pushFront(i)
	sh.index.put(h, i, sh.ents)
	return i
}

func (sh *shard) remove(i int32) {
	e := &sh.ents[i]
	sh.unlink(i)
	sh.index.del(e.key, e.key.hash(), sh.ents)
	e.gen++
	e.active = none
	e.next = sh.free
	sh.free = i
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
			sh.remove(i)
			sh.stats.Expirations++
			n++
		}
		i = prev
	}
	return n
}
