package affinity

import (
	"fmt"
	"math/rand/v2"
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
				if l2.Server() != l.Server() {
					errs <- "client " + c.String() + " saw " + l.Server().String() + " and " + l2.Server().String()
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

// held is the local open connections of l's template, if l's template is
// still there (same generation).
func (t *Table) held(l Lease) (uint32, bool) {
	sh := &t.shards[l.h&t.mask]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, ok := sh.getGen(l.h, l.gen())
	if !ok {
		return 0, false
	}
	return sh.ents[i].local(), true
}

// Hits and releases take no lock (fast.go) while lock holders grow the
// slot arrays, evict at the bound, move templates back over removed ones,
// expire and invalidate. Each worker owns its clients, so it knows how
// many connections each of its templates must count: after every hit and
// release the template (if it is still the same one) counts exactly the
// leases of it the worker holds. A change lost to a template moved or
// frozen meanwhile shows as a count that differs. Run with -race.
func TestLockFreeChangesAreNotLost(t *testing.T) {
	// Growing arrays (many templates, several shards), and a small full
	// shard where evictions move templates all the time.
	// Each growing table is new: the arrays grow while the workers fill it.
	// In the arena, the arrays move into their regions as they fill.
	for _, c := range []struct {
		capacity, shards, perWorker, rounds, tables int
		arena                                       bool
	}{{4096, 4, 1024, 2000, 30, false}, {4096, 4, 1024, 2000, 30, true}, {256, 1, 128, 50000, 1, false}} {
		t.Run(fmt.Sprintf("%d/%d/arena=%v", c.capacity, c.shards, c.arena), func(t *testing.T) {
			o := Options{Capacity: c.capacity, Shards: c.shards}
			if c.arena {
				o.arenaMin = 1
			}
			for range c.tables {
				testLockFree(t, o, c.perWorker, c.rounds)
			}
		})
	}
}

func testLockFree(t *testing.T, o Options, perWorker, rounds int) {
	p := newPicker(4)
	tb, ref, clk := newTestTable(o, ServiceConfig{Timeout: time.Second}, p)
	if o.arenaMin > 0 && tb.arena == nil {
		t.Fatal("no arena")
	}
	defer tb.Close()
	const workers = 4
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan string, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), 7))
			held := map[int][]Lease{}
			check := func(c int, l Lease) bool {
				n, ok := tb.held(l)
				if !ok {
					return true // gone (evicted, invalidated, expired): nothing to count
				}
				want := 0
				for _, o := range held[c] {
					if o.gen() == l.gen() {
						want++
					}
				}
				if int(n) != want {
					errs <- fmt.Sprintf("client %d: template counts %d connections, %d leases held", c, n, want)
					return false
				}
				return true
			}
			for range rounds {
				c := w*perWorker + rnd.IntN(perWorker)
				if ls := held[c]; len(ls) > 0 && rnd.IntN(2) == 0 {
					l := ls[len(ls)-1]
					held[c] = ls[:len(ls)-1]
					tb.Release(l)
					if !check(c, l) {
						return
					}
					continue
				}
				l, err := tb.GetOrBind(ref, client(c), p)
				if err != nil {
					errs <- err.Error()
					return
				}
				held[c] = append(held[c], l)
				if !check(c, l) {
					return
				}
			}
			for _, ls := range held {
				for _, l := range ls {
					tb.Release(l)
				}
			}
		}()
	}
	chaos := make(chan struct{})
	go func() {
		defer close(chaos)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			switch i % 3 {
			case 0:
				clk.Advance(300 * time.Millisecond)
				tb.Sweep()
			case 1:
				tb.Invalidate(Filter{Client: client(i % (workers * perWorker))})
			case 2:
				tb.List(Filter{})
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-chaos
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	for _, tp := range tb.List(Filter{}) {
		if tp.Active != 0 {
			t.Fatalf("%v counts %d open connections after every lease was released", tp.Client, tp.Active)
		}
	}
	s := tb.Stats()
	if s.Hits == 0 || o.Capacity < workers*perWorker/2 && (s.Evictions == 0 || s.Invalidations == 0) {
		t.Fatalf("the run did not exercise hits (and, at the bound, evictions and invalidations): %+v", s)
	}
}
