package affinity

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The arena: a large table's slot arrays outside the Go heap, in one
// anonymous mapping the kernel may back with 2 MB pages (MADV_HUGEPAGE).
// A lookup in a 1 M-template table touches a random cache line; on 4 KB
// pages it is also a TLB miss and a page walk (the README's Performance
// section has what the arena gained). Each shard owns a region of the
// arena as long as its final array, side by side, so that the shards
// share huge pages: one mapping a shard would round up to 2 MB each.
//
// A shard's array moves into its region, at its final length, once it
// would be half that (grow); smaller arrays stay on the heap, so that a
// table holding few templates faults in none of the arena.
// Resident memory is at most the arena, capacity × 48 B, reached as the
// shards fill: the bound the configuration documents.

// arenaMin is the least arena worth a mapping: smaller tables fit a few
// huge pages' TLB reach on the heap anyway.
const arenaMin = 4 << 20

// mapArena maps room for n entries, 2 MB-aligned, or returns nil when
// that is less than least bytes or the mapping fails (the heap serves).
// The GC does not see this memory: entries hold no pointers.
func mapArena(n, least int) ([]entry, []byte) {
	size := n * int(unsafe.Sizeof(entry{}))
	if size < least {
		return nil, nil
	}
	const huge = 2 << 20
	size = (size + huge - 1) &^ (huge - 1)
	// The kernel backs only the 2 MB-aligned parts of a mapping with huge
	// pages, and mmap aligns to 4 KB: map a huge page more and trim the
	// ends, or a quarter to a half of the arena stays on small pages.
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(size+huge), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, nil
	}
	base := uintptr(p)
	start := (base + huge - 1) &^ (huge - 1)
	if head := start - base; head > 0 {
		unix.MunmapPtr(p, head)
	}
	if tail := base + huge - start; tail > 0 {
		unix.MunmapPtr(unsafe.Add(p, start-base+uintptr(size)), tail)
	}
	m := unsafe.Slice((*byte)(unsafe.Add(p, start-base)), size)
	// Advice: refused without THP, and then 4 KB pages serve.
	unix.Madvise(m, unix.MADV_HUGEPAGE)
	return unsafe.Slice((*entry)(unsafe.Pointer(&m[0])), n), m
}

// arenaOwner is what a table's cleanup frees: not the table itself, which
// the cleanup must not keep reachable.
type arenaOwner struct {
	shards []shard
	m      []byte
}

// unmapArena unmaps a mapping mapArena returned.
func unmapArena(m []byte) {
	if m != nil {
		unix.MunmapPtr(unsafe.Pointer(&m[0]), uintptr(len(m)))
	}
}

// residentMapped is how many bytes of the table's arena are backed by
// memory now, which the heap does not show.
func (t *Table) residentMapped() int {
	m := t.arena
	if m == nil {
		return 0
	}
	page := unix.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return -1
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n * page
}
