package director

import "slices"

// closedSet is one scan's closed flows, as keyHash values: appended while
// the scan reads conntrack, sorted when it ends, searched by the next
// scan. Under a flood of short connections it holds every flow closed in
// the last seconds (some 30 000 at 12 000 connections a second): 8 bytes
// a flow, where a map[uint64]struct{} took 30-37 and kept its room after
// the flood (BenchmarkClosedSetBytes measures both).
type closedSet struct{ h []uint64 }

// minRoom is the room a set keeps however small its fills: a few
// kilobytes, so that a quiet director does not allocate every scan.
const minRoom = 512

// reset empties the set for a new fill. It keeps room for twice what
// its last fill held; more goes back to the heap, so that the memory a
// burst took is given back once it is over.
func (s *closedSet) reset() {
	if n := len(s.h); cap(s.h) > max(4*n, minRoom) {
		s.h = make([]uint64, 0, max(2*n, minRoom))
		return
	}
	s.h = s.h[:0]
}

func (s *closedSet) add(hk uint64) { s.h = append(s.h, hk) }

// seal sorts the fill for has; a flow ended and told of in one scan is
// in it once.
func (s *closedSet) seal() {
	slices.Sort(s.h)
	s.h = slices.Compact(s.h)
}

// has says whether a sealed set holds hk.
func (s *closedSet) has(hk uint64) bool {
	_, ok := slices.BinarySearch(s.h, hk)
	return ok
}
