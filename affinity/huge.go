package affinity

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// hugeSlice reserves room for n values of T outside the Go heap, in an
// anonymous mapping the kernel may back with 2 MB pages (MADV_HUGEPAGE).
// A lookup in a 1 M-template table touches a random cache line; on 4 KB
// pages it is also a TLB miss and a page walk, which costs more than the
// lookup itself. T must hold no pointers: the GC does not see this memory.
// It returns a slice of n zero values and the mapping, to be
// unmapped when the table is gone; nil, nil for less than hugeMin bytes or
// when the mapping fails (the caller then uses the heap). Small arrays stay
// on the heap: a 2 MB page for each would waste memory, and mappings that
// all start 2 MB-aligned put every shard's first slots in the same cache
// sets.
const hugeMin = 1 << 20

func hugeSlice[T any](n int) ([]T, []byte) {
	var zero T
	size := n * int(unsafe.Sizeof(zero))
	if size < hugeMin {
		return nil, nil
	}
	const huge = 2 << 20
	size = (size + huge - 1) &^ (huge - 1)
	// The kernel backs only the 2 MB-aligned parts of a mapping with huge
	// pages, and mmap aligns to 4 KB: map a huge page more and trim the
	// ends, or a quarter to a half of each array stays on small pages
	// (measured: 32 of 64 MB huge in a 1 M-template table).
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(size+huge), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
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
	return unsafe.Slice((*T)(unsafe.Pointer(&m[0])), n), m
}

// unmapHuge unmaps a mapping hugeSlice returned.
func unmapHuge(m []byte) { unix.MunmapPtr(unsafe.Pointer(&m[0]), uintptr(len(m))) }

// retireHuge gives a mapping's memory back and leaves it mapped: reads
// find zeros (empty slots) from then on.
func retireHuge(m []byte) {
	unix.Madvise(m, unix.MADV_NOHUGEPAGE) // a stray write faults in 4 KB, not 2 MB
	unix.Madvise(m, unix.MADV_DONTNEED)
}

// residentMapped is how many bytes of the table's off-heap slot arrays are
// backed by memory now, which the heap does not show.
func (t *Table) residentMapped() int {
	page := unix.Getpagesize()
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		if m := sh.mapped; m != nil {
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
