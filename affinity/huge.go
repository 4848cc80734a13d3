package affinity

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// hugeSlice reserves room for n values of T outside the Go heap, in an
// anonymous mapping the kernel may back with 2 MB pages (MADV_HUGEPAGE).
// A lookup in a 1 M-template table touches two random cache lines; on 4 KB
// pages each is also a TLB miss and a page walk, which costs more than the
// lookup itself. The mapping is backed only where it is touched, so an
// empty table costs little. T must hold no pointers: the GC does not see
// this memory. It returns a zero-length slice of capacity n and the
// mapping, to be unmapped when the table is gone; nil, nil for less than
// hugeMin bytes or when the mapping fails (the caller then uses the heap).
// Small slabs stay on the heap: a 2 MB page for each would waste memory,
// and mappings that all start 2 MB-aligned put every shard's first
// entries in the same cache sets.
const hugeMin = 1 << 20

func hugeSlice[T any](n int, advise bool) ([]T, []byte) {
	var zero T
	size := n * int(unsafe.Sizeof(zero))
	if size < hugeMin {
		return nil, nil
	}
	const huge = 2 << 20
	size = (size + huge - 1) &^ (huge - 1)
	m, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil
	}
	if advise {
		adviseHuge(m, 0)
	}
	return unsafe.Slice((*T)(unsafe.Pointer(&m[0])), n)[:0], m
}

// adviseHuge asks for 2 MB pages in m: advice, refused without THP, and
// then 4 KB pages serve. The first used bytes of m, already in 4 KB pages,
// are collapsed into huge pages at once (MADV_COLLAPSE, Linux 6.1) rather
// than left to khugepaged.
func adviseHuge(m []byte, used int) {
	unix.Madvise(m, unix.MADV_HUGEPAGE)
	const huge = 2 << 20
	if used = (used + huge - 1) &^ (huge - 1); used > 0 {
		unix.Madvise(m[:min(used, len(m))], unix.MADV_COLLAPSE)
	}
}

// residentMapped is how many bytes of the table's off-heap slabs and
// indexes are backed by memory now, which the heap does not show.
func (t *Table) residentMapped() int {
	page := unix.Getpagesize()
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for _, m := range [][]byte{sh.slabMap, sh.index.mapped} {
			if m == nil {
				continue
			}
			vec := make([]byte, (len(m)+page-1)/page)
			if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
				sh.mu.Unlock()
				return -1
			}
			for _, v := range vec {
				n += int(v & 1)
			}
		}
		sh.mu.Unlock()
	}
	return n * page
}
