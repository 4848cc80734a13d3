package director

import (
	"runtime"
	"testing"
)

// A sealed set holds what was added, once each, and nothing else.
func TestClosedSet(t *testing.T) {
	var s closedSet
	s.reset()
	for _, h := range []uint64{9, 3, 7, 3, 1 << 63} {
		s.add(h)
	}
	s.seal()
	for _, h := range []uint64{9, 3, 7, 1 << 63} {
		if !s.has(h) {
			t.Errorf("has(%d) false after it was added", h)
		}
	}
	for _, h := range []uint64{0, 2, 8, 1<<63 - 1} {
		if s.has(h) {
			t.Errorf("has(%d) true, never added", h)
		}
	}
	if len(s.h) != 4 {
		t.Errorf("%d hashes held, want 4 (3 added twice)", len(s.h))
	}
	s.reset()
	s.seal()
	if s.has(9) {
		t.Error("a reset set still holds 9")
	}
}

// The room a burst took goes back once the fills are small again, and a
// steady fill keeps its room (no allocation a scan).
func TestClosedSetGivesRoomBack(t *testing.T) {
	var s closedSet
	fill := func(n int) {
		s.reset()
		for i := range n {
			s.add(uint64(i) * 0x9e3779b97f4a7c15)
		}
		s.seal()
	}
	fill(30_000)
	burst := cap(s.h)
	fill(100) // the reset before it still sees the burst's fill
	fill(100)
	if c := cap(s.h); c >= burst/4 || c > 4*minRoom {
		t.Fatalf("after the burst the set keeps room for %d hashes (the burst took %d)", c, burst)
	}
	if a := testing.AllocsPerRun(10, func() { fill(300) }); a != 0 {
		t.Fatalf("a steady fill of 300 allocates %.0f times a scan", a)
	}
}

// BenchmarkClosedSetBytes: the heap a scan's set of 30 000 closed flows
// takes (some 2.5 s of closes at 12 000 connections a second), as a
// closedSet and, measured the same way in the same run, as the
// map[uint64]struct{} it replaced. It measures once, whatever b.N is.
func BenchmarkClosedSetBytes(b *testing.B) {
	const n = 30_000
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	var s closedSet
	s.reset()
	for i := range n {
		s.add(uint64(i) * 0x9e3779b97f4a7c15)
	}
	s.seal()
	set := float64(heap()-before) / n
	runtime.KeepAlive(s)
	before = heap()
	m := map[uint64]struct{}{}
	for i := range n {
		m[uint64(i)*0x9e3779b97f4a7c15] = struct{}{}
	}
	ref := float64(heap()-before) / n
	runtime.KeepAlive(m)
	b.ReportMetric(set, "B/flow")
	b.ReportMetric(ref, "B/flow-map")
	b.ReportMetric(0, "ns/op")
}
