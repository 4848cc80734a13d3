package affinity

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

// Many goroutines bind, release, sweep, list and invalidate at once. Run
// with -race. Invariants: a client group never sees two servers while its
// template lives, and once every connection is released no template counts
// an open connection.
func TestConcurrentGetReleaseExpire(t *testing.T) {
	p := newPicker(4)
	tb, ref, clk := newTestTable(Options{Capacity: 512, Shards: 8}, ServiceConfig{Timeout: time.Second}, p)
	defer tb.Close()
	const workers, rounds, clients = 8, 2000, 300
	var wg sync.WaitGroup
	errs := make(chan string, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			held := make([]Lease, 0, 4)
			for i := range rounds {
				c := client((w*7919 + i*31) % clients)
				l, err := tb.GetOrBind(ref, c, p)
				if err != nil {
					errs <- err.Error()
					return
				}
				// While we hold l, the template is active and cannot expire;
				// a second connection of the same client must join it,
				// unless the template was evicted meanwhile (bound 512 is
				// above 300 clients, so it never is).
				l2, err := tb.GetOrBind(ref, c, p)
				if err != nil {
					errs <- err.Error()
					return
				}
				if l2.Server != l.Server {
					errs <- "client " + c.String() + " saw " + l.Server.String() + " and " + l2.Server.String()
					return
				}
				held = append(held, l, l2)
				if len(held) >= 4 {
					for _, h := range held {
						tb.Release(h)
					}
					held = held[:0]
				}
				switch i % 500 {
				case 0:
					clk.Advance(2 * time.Second)
				case 1:
					tb.Sweep()
				case 2:
					tb.List(Filter{Client: c})
				}
			}
			for _, h := range held {
				tb.Release(h)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	for _, tp := range tb.List(Filter{}) {
		if tp.Active != 0 {
			t.Fatalf("template %+v still counts open connections after all were released", tp)
		}
	}
	st := tb.Stats()
	if st.Hits+st.Misses != workers*rounds*2 {
		t.Errorf("hits %d + misses %d != %d lookups", st.Hits, st.Misses, workers*rounds*2)
	}
	_ = netip.Addr{}
}
