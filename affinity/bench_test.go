package affinity

import (
	"io"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Every benchmark runs against a table holding benchEntries templates, with
// two access patterns:
//
//   - hot: lookups cycle over a 16 K-client working set (in random order)
//     inside the 1 M table: the clients that are connecting right now are
//     few of those the table remembers. This is the realistic figure.
//   - uniform: lookups are uniformly random over all 1 M templates, so
//     nearly every one misses the CPU caches. BenchmarkFloorMapLookup
//     measures what a bare Go map lookup costs under the same pattern, as
//     the floor that figure sits on.
const (
	benchEntries = 1 << 20
	hotClients   = 1 << 14
)

var patterns = []struct {
	name string
	n    int
}{{"hot", hotClients}, {"uniform", benchEntries}}

// benchTable is a table holding n idle templates, and their clients in a
// random order. Capacity has headroom: at exactly full, a cyclic access
// pattern is LRU's worst case and would measure misses, not hits.
func benchTable(b *testing.B, capacity, n int) (*Table, ServiceRef, *rrPicker, []netip.Addr) {
	b.Helper()
	p := newPicker(8)
	tb := New(Options{Capacity: capacity, SweepInterval: -1})
	ref := tb.SetService(svcWeb, ServiceConfig{Timeout: time.Hour})
	for _, s := range p.servers {
		tb.SetServer(ref, s, ServerUp)
	}
	clients := make([]netip.Addr, n)
	for i := range clients {
		clients[i] = client(i)
		l, err := tb.GetOrBind(ref, clients[i], p)
		if err != nil {
			b.Fatal(err)
		}
		tb.Release(l)
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(clients), func(i, j int) { clients[i], clients[j] = clients[j], clients[i] })
	return tb, ref, p, clients
}

// BenchmarkHit: a returning client's new connection finds its idle template.
// The leases are released with the timer stopped, 4096 at a time: kept in
// a ring that stays in the CPU caches, so that the figure does not include
// writing a lease per hit to memory, which the map reference does not do.
//
// The -dependent variants pick each client from the answer before (the
// server's port), as BenchmarkFloorMapLookup's do: a connection needs its
// server before it dials, so in a proxy no two hits overlap their misses.
func BenchmarkHit(b *testing.B) {
	for _, pat := range patterns {
		for _, dep := range []bool{false, true} {
			name := pat.name
			if dep {
				name += "-dependent"
			}
			benchHit(b, name, pat.n, dep)
		}
	}
}

func benchHit(b *testing.B, name string, n int, dependent bool) {
	b.Run(name, func(b *testing.B) {
		tb, ref, p, clients := benchTable(b, 2*benchEntries, benchEntries)
		defer tb.Close()
		clients = clients[:n]
		var leases [4096]Lease
		var prev uint16
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			j := i % len(clients)
			if k := i % len(leases); k == 0 && i > 0 {
				b.StopTimer()
				for _, l := range leases {
					tb.Release(l)
				}
				b.StartTimer()
			}
			if dependent {
				j = (j + int(prev&1)) % len(clients)
			}
			l, _ := tb.GetOrBind(ref, clients[j], p)
			prev = l.Server().Port()
			leases[i%len(leases)] = l
		}
		b.StopTimer()
		if tb.Stats().Misses != benchEntries {
			b.Fatalf("misses during the timed hits: %+v", tb.Stats())
		}
	})
}

// BenchmarkRelease: a connection closes; its template becomes the most
// recently used idle one.
func BenchmarkRelease(b *testing.B) {
	for _, pat := range patterns {
		b.Run(pat.name, func(b *testing.B) {
			tb, ref, p, clients := benchTable(b, 2*benchEntries, benchEntries)
			defer tb.Close()
			clients = clients[:pat.n]
			leases := make([]Lease, len(clients))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				j := i % len(clients)
				if j == 0 {
					b.StopTimer()
					for k, c := range clients {
						leases[k], _ = tb.GetOrBind(ref, c, p)
					}
					b.StartTimer()
				}
				tb.Release(leases[j])
			}
		})
	}
}

// BenchmarkMissBind: a new client at the bound: the scheduler runs, the
// least recently used idle template is evicted, a template is bound.
func BenchmarkMissBind(b *testing.B) {
	tb, ref, p, _ := benchTable(b, benchEntries, benchEntries)
	defer tb.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l, _ := tb.GetOrBind(ref, client(benchEntries+i), p)
		tb.Release(l)
	}
	b.StopTimer()
	if tb.Len() > benchEntries {
		b.Fatalf("Len %d above the bound", tb.Len())
	}
}

// BenchmarkHitRelease is one short connection of a returning client, on one
// goroutine: the reference for BenchmarkHitReleaseParallel.
func BenchmarkHitRelease(b *testing.B) {
	for _, pat := range patterns {
		b.Run(pat.name, func(b *testing.B) {
			tb, ref, p, clients := benchTable(b, 2*benchEntries, benchEntries)
			defer tb.Close()
			clients = clients[:pat.n]
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				l, _ := tb.GetOrBind(ref, clients[i%len(clients)], p)
				tb.Release(l)
			}
		})
	}
}

// BenchmarkHitReleaseCached is BenchmarkHitRelease on a table that holds
// only the 16 K hot clients, so that it stays in the CPU caches: the cost of
// the code path itself, without memory latency.
func BenchmarkHitReleaseCached(b *testing.B) {
	tb, ref, p, clients := benchTable(b, 0, hotClients)
	defer tb.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l, _ := tb.GetOrBind(ref, clients[i%len(clients)], p)
		tb.Release(l)
	}
}

// BenchmarkHitReleaseParallel runs BenchmarkHitRelease's operation on all
// cores (GOMAXPROCS goroutines). Throughput scaling is BenchmarkHitRelease's
// ns/op divided by this one's.
func BenchmarkHitReleaseParallel(b *testing.B) {
	for _, pat := range patterns {
		b.Run(pat.name, func(b *testing.B) {
			tb, ref, p, clients := benchTable(b, 2*benchEntries, benchEntries)
			defer tb.Close()
			clients = clients[:pat.n]
			var seed atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seed.Add(1)) * 7919
				for pb.Next() {
					l, _ := tb.GetOrBind(ref, clients[i%len(clients)], p)
					tb.Release(l)
					i++
				}
			})
		})
	}
}

// mapKey is the references' key: what a Go programmer keys a bare map
// with (the masked client's 16 bytes and the service), as the table's key
// was until it became words; the floor does not move with the table.
type mapKey struct {
	addr [16]byte
	svc  uint32
}

// benchMap is a bare Go map of benchTable's keys, and the keys in the
// same random order: the references' table.
func benchMap() (map[mapKey]int32, []mapKey) {
	m := make(map[mapKey]int32)
	keys := make([]mapKey, benchEntries)
	for i := range keys {
		keys[i] = mapKey{addr: client(i).As16(), svc: 0} // service 0, as benchTable's
		m[keys[i]] = int32(i)
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	return m, keys
}

// BenchmarkFloorMapLookup is a bare Go map lookup of the same keys under the
// same patterns: the memory-latency floor under the table's figures.
func BenchmarkFloorMapLookup(b *testing.B) {
	m, keys := benchMap()
	for _, pat := range patterns {
		b.Run(pat.name, func(b *testing.B) {
			ks := keys[:pat.n]
			var sum int32
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				sum += m[ks[i%len(ks)]]
			}
			runtime.KeepAlive(sum)
		})
		// Dependent: each lookup's key depends on the one before, as a
		// connection needs its server before it can go on. Independent
		// lookups overlap their cache misses; these cannot, so this is
		// the memory-latency floor of one lookup whose answer is used.
		b.Run(pat.name+"-dependent", func(b *testing.B) {
			ks := keys[:pat.n]
			var v int32
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				v = m[ks[(i+int(v&1))%len(ks)]]
			}
			runtime.KeepAlive(v)
		})
	}
}

// BenchmarkFloorLockedMap is the simplest safe table a hit could use: a
// bare Go map of the same keys under one sync.Mutex, counting the
// connection (m[k]++), on one goroutine and on all of them. A hit must
// write, and a lock (or any atomic) ends the overlap of cache misses that
// independent bare-map lookups enjoy; this is the floor for a table that
// takes a lock, measured in the same run.
func BenchmarkFloorLockedMap(b *testing.B) {
	m, keys := benchMap()
	var mu sync.Mutex
	for _, pat := range patterns {
		b.Run(pat.name, func(b *testing.B) {
			ks := keys[:pat.n]
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				mu.Lock()
				m[ks[i%len(ks)]]++
				mu.Unlock()
			}
		})
		b.Run(pat.name+"-parallel", func(b *testing.B) {
			ks := keys[:pat.n]
			var seed atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seed.Add(1)) * 7919
				for pb.Next() {
					mu.Lock()
					m[ks[i%len(ks)]]++
					mu.Unlock()
					i++
				}
			})
		})
	}
}

// BenchmarkFloorSlotCAS is the memory floor of a table that writes: one
// compare-and-swap on a random 32-byte slot (the table's entry size) of
// an array as large as a 1 M table's, and nothing else. Set against the
// bare map's lookup, it shows how much of a hit's cost is its one atomic
// write to a line it must fetch, and how much the instructions around it
// (an out-of-order CPU overlaps the next slot's miss with this one's only
// as far as its window of instructions reaches).
func BenchmarkFloorSlotCAS(b *testing.B) {
	const words = 4 // 32 bytes a slot
	slots := make([]atomic.Uint64, words*3*benchEntries/2)
	for _, pat := range patterns {
		b.Run(pat.name, func(b *testing.B) {
			idx := make([]int, pat.n)
			r := rand.New(rand.NewPCG(3, 4))
			for i := range idx {
				idx[i] = words * r.IntN(len(slots)/words)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s := &slots[idx[i%len(idx)]]
				w := s.Load()
				s.CompareAndSwap(w, w+1)
			}
		})
	}
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkBytesPerEntry reports the memory a table of 1 M templates costs
// per template (its heap, and the resident part of its off-heap slot
// arrays), and, measured the same way in the same run, what a golang-lru
// simplelru holding the same key and entry costs (B/entry-simplelru). It
// measures once, whatever b.N is: a heap measurement is not a loop.
func BenchmarkBytesPerEntry(b *testing.B) {
	var per, ref float64
	{
		before := heapInUse()
		tb, _, _, _ := benchTable(b, benchEntries, benchEntries)
		per = float64(int(heapInUse()-before)+tb.residentMapped()) / benchEntries
		tb.Close()
		runtime.KeepAlive(tb)

		before = heapInUse()
		// The value is an entry's four words, as plain ones (an entry's
		// atomics do not copy).
		l, _ := simplelru.NewLRU[key, [4]uint64](benchEntries, nil)
		for i := range benchEntries {
			k := makeKey(0, client(i))
			l.Add(k, [4]uint64{k.hi, k.lo})
		}
		ref = float64(heapInUse()-before) / benchEntries
		runtime.KeepAlive(l)
	}
	b.ReportMetric(per, "B/entry")
	if per > 64 {
		b.Errorf("%.1f B/entry is above the 64 B target", per)
	}
	b.ReportMetric(ref, "B/entry-simplelru")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkSnapshot writes a snapshot of 1 M templates while one goroutine
// keeps hitting; it reports the write's duration and the slowest hit
// during it, against the slowest hit of an equal run without a snapshot:
// the pause a periodic snapshot costs a lookup (the table is walked a
// chunk of slots per lock). It measures once, whatever b.N is: each
// measurement takes two seconds, and the suite runs with a large -benchtime.
func BenchmarkSnapshot(b *testing.B) {
	tb, ref, p, clients := benchTable(b, 2*benchEntries, benchEntries)
	defer tb.Close()
	clients = clients[:hotClients]
	slowest := func(d time.Duration, during func()) time.Duration {
		var worst time.Duration
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i, end := 0, time.Now().Add(d); time.Now().Before(end); i++ {
				t0 := time.Now()
				l, _ := tb.GetOrBind(ref, clients[i%len(clients)], p)
				tb.Release(l)
				worst = max(worst, time.Since(t0))
			}
		}()
		during()
		<-done
		return worst
	}
	var took time.Duration
	b.ResetTimer()
	with := slowest(time.Second, func() {
		t0 := time.Now()
		tb.WriteSnapshot(io.Discard)
		took = time.Since(t0)
	})
	without := slowest(time.Second, func() {})
	b.ReportMetric(float64(took.Milliseconds()), "ms/snapshot")
	b.ReportMetric(float64(with.Microseconds()), "µs-slowest-hit-during")
	b.ReportMetric(float64(without.Microseconds()), "µs-slowest-hit-without")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkFloorParallelScaling is what 2 goroutines (GOMAXPROCS) can gain
// over one on this machine, with no shared state at all: bare map lookups
// of the same keys in the same order, and a loop of multiplications in
// registers. The ratio of each pair's ns/op bounds what
// BenchmarkHitReleaseParallel can show against BenchmarkHitRelease.
func BenchmarkFloorParallelScaling(b *testing.B) {
	m, keys := benchMap()
	for _, pat := range patterns {
		ks := keys[:pat.n]
		b.Run(pat.name+"-map-serial", func(b *testing.B) {
			var v int32
			for i := 0; i < b.N; i++ {
				v += m[ks[i%len(ks)]]
			}
			runtime.KeepAlive(v)
		})
		b.Run(pat.name+"-map-parallel", func(b *testing.B) {
			var seed atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				i := int(seed.Add(1)) * 7919
				var v int32
				for pb.Next() {
					v += m[ks[i%len(ks)]]
					i++
				}
				runtime.KeepAlive(v)
			})
		})
	}
	spin := func(x uint64) uint64 {
		for range 100 {
			x = x*6364136223846793005 + 1
		}
		return x
	}
	b.Run("spin-serial", func(b *testing.B) {
		x := uint64(1)
		for i := 0; i < b.N; i++ {
			x = spin(x)
		}
		runtime.KeepAlive(x)
	})
	b.Run("spin-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			x := uint64(1)
			for pb.Next() {
				x = spin(x)
			}
			runtime.KeepAlive(x)
		})
	})
}
