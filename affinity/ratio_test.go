package affinity

import (
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// BenchmarkRatios is the persistence table's targets as one figure each: a
// hit's and a release's time over a bare map lookup of the same keys,
// hot and uniform (the patterns of BenchmarkHit). Like BenchmarkScaling it
// measures in alternating rounds within one process, the table's work and
// then the map's, so that a moment of a noisy host weighs on both, and
// reports the medians of the rounds' ratios (with the uniform hit's least
// and greatest). It measures once, whatever b.N is:
//
//	go test -run '^$' -bench '^BenchmarkRatios$' -benchtime 1x ./affinity
//
// Hits are timed a batch at a time: a batch's leases are kept in a ring
// that stays in the CPU caches, as BenchmarkHit's, and given back with the
// clock stopped.
func BenchmarkRatios(b *testing.B) {
	const (
		rounds = 15
		ops    = 1 << 20 // a round's operations of each kind
		batch  = 4096
	)
	tb, ref, p, clients := benchTable(b, 2*benchEntries, benchEntries)
	defer tb.Close()
	m, keys := benchMap()
	var leases [batch]Lease
	hits := func(cs []netip.Addr) time.Duration {
		var d time.Duration
		for i := 0; i < ops; i += batch {
			start := time.Now()
			for k := range batch {
				leases[k], _ = tb.GetOrBind(ref, cs[(i+k)%len(cs)], p)
			}
			d += time.Since(start)
			for _, l := range leases {
				tb.Release(l)
			}
		}
		return d
	}
	// Releases are of leases all taken first, as BenchmarkRelease's, so
	// that a uniform release finds its slot out of the caches.
	held := make([]Lease, ops)
	releases := func(cs []netip.Addr) time.Duration {
		for i := range held {
			held[i], _ = tb.GetOrBind(ref, cs[i%len(cs)], p)
		}
		start := time.Now()
		for _, l := range held {
			tb.Release(l)
		}
		return time.Since(start)
	}
	lookups := func(n int) time.Duration {
		ks := keys[:n]
		var v int32
		start := time.Now()
		for i := range ops {
			v += m[ks[i%len(ks)]]
		}
		d := time.Since(start)
		runtime.KeepAlive(v)
		return d
	}
	ratios := map[string][]float64{}
	b.ResetTimer()
	for range rounds {
		for _, pat := range patterns {
			cs := clients[:pat.n]
			h := hits(cs)
			mp := lookups(pat.n)
			r := releases(cs)
			ratios["x-hit-"+pat.name] = append(ratios["x-hit-"+pat.name], float64(h)/float64(mp))
			ratios["x-release-"+pat.name] = append(ratios["x-release-"+pat.name], float64(r)/float64(mp))
			ratios["ns-hit-"+pat.name] = append(ratios["ns-hit-"+pat.name], float64(h)/ops)
			ratios["ns-map-"+pat.name] = append(ratios["ns-map-"+pat.name], float64(mp)/ops)
		}
	}
	b.StopTimer()
	for _, name := range []string{"ns-hit-uniform", "ns-map-uniform", "x-hit-hot", "x-hit-uniform", "x-release-hot", "x-release-uniform"} {
		reportRounds(b, name, ratios[name], name == "x-hit-uniform")
	}
	if s := tb.Stats(); s.Misses != benchEntries {
		b.Fatalf("misses during the timed hits: %+v", s)
	}
}
