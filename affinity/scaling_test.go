package affinity

import (
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkScaling is what GOMAXPROCS goroutines gain over one on the same
// work, uniform: the table's hit and release (a returning client's short
// connection) and, as the reference, the bare map's lookup of the same
// keys. The two are measured in alternating rounds, one goroutine and then
// all, so that a moment of a noisy host weighs on both, and the figures
// are the medians of the rounds' ratios: x-table and x-map (throughput on
// all goroutines over one). Like BenchmarkBytesPerEntry it measures once,
// whatever b.N is.
func BenchmarkScaling(b *testing.B) {
	const (
		rounds = 9
		ops    = 1 << 21 // a round's operations, on one goroutine or spread over all
	)
	tb, ref, p, clients := benchTable(b, 2*benchEntries, benchEntries)
	defer tb.Close()
	m, keys := benchMap()
	procs := runtime.GOMAXPROCS(0)
	table := func(from, n int) {
		for i := from; i < from+n; i++ {
			l, _ := tb.GetOrBind(ref, clients[i%len(clients)], p)
			tb.Release(l)
		}
	}
	lookup := func(from, n int) {
		var v int32
		for i := from; i < from+n; i++ {
			v += m[keys[i%len(keys)]]
		}
		runtime.KeepAlive(v)
	}
	// timed runs work on g goroutines, each from its own place in the
	// keys, as BenchmarkHitReleaseParallel's do.
	timed := func(work func(from, n int), g int) time.Duration {
		var wg sync.WaitGroup
		start := time.Now()
		for k := range g {
			wg.Add(1)
			go func() {
				defer wg.Done()
				work(k*7919, ops/g)
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	var xt, xm []float64
	b.ResetTimer()
	for range rounds {
		xt = append(xt, float64(timed(table, 1))/float64(timed(table, procs)))
		xm = append(xm, float64(timed(lookup, 1))/float64(timed(lookup, procs)))
	}
	b.StopTimer()
	reportRounds(b, "x-table", xt, true)
	reportRounds(b, "x-map", xm, true)
	if s := tb.Stats(); s.Misses != benchEntries {
		b.Fatalf("misses during the timed hits: %+v", s)
	}
}

// reportRounds reports the median of a benchmark's rounds as name, and
// with spread their least and greatest as name-min and name-max.
func reportRounds(b *testing.B, name string, rounds []float64, spread bool) {
	slices.Sort(rounds)
	b.ReportMetric(rounds[len(rounds)/2], name)
	if spread {
		b.ReportMetric(rounds[0], name+"-min")
		b.ReportMetric(rounds[len(rounds)-1], name+"-max")
	}
}
