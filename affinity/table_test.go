package affinity

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
)

func mustBind(t *testing.T, tb *Table, ref ServiceRef, c netip.Addr, p Picker) Lease {
	t.Helper()
	l, err := tb.GetOrBind(ref, c, p)
	if err != nil {
		t.Fatalf("GetOrBind(%s): %v", c, err)
	}
	return l
}

func TestHitReturnsBoundServerMissAsksScheduler(t *testing.T) {
	p := newPicker(3)
	tb, ref, _ := newTestTable(Options{}, ServiceConfig{}, p)
	defer tb.Close()

	first := mustBind(t, tb, ref, client(1), p)
	if first.Hit || p.calls.Load() != 1 {
		t.Fatalf("first connection: hit=%v, scheduler calls=%d; want miss and 1 call", first.Hit, p.calls.Load())
	}
	for range 10 {
		l := mustBind(t, tb, ref, client(1), p)
		if !l.Hit || l.Server() != first.Server() {
			t.Fatalf("repeat connection went to %s (hit=%v), want %s from the template", l.Server(), l.Hit, first.Server())
		}
	}
	if p.calls.Load() != 1 {
		t.Errorf("scheduler called %d times, want 1", p.calls.Load())
	}
	other := mustBind(t, tb, ref, client(2), p)
	if other.Hit || other.Server() == first.Server() {
		t.Errorf("second client: %+v; want a fresh round-robin choice", other)
	}
	got := tb.Stats()
	want := Stats{Templates: 2, Hits: 10, Misses: 2, Binds: 2}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Stats (-want +got):\n%s", diff)
	}
	ls := tb.List(Filter{Client: client(1)})
	if len(ls) != 1 || ls[0].Active != 11 {
		t.Errorf("List = %+v, want one template with 11 open connections", ls)
	}
}

func TestMaskGroupsClients(t *testing.T) {
	p := newPicker(3)
	m, _ := ParseMask("255.255.255.0", "")
	tb, ref, _ := newTestTable(Options{}, ServiceConfig{Mask: m}, p)
	defer tb.Close()
	a := mustBind(t, tb, ref, netip.MustParseAddr("127.0.5.1"), p)
	b := mustBind(t, tb, ref, netip.MustParseAddr("127.0.5.200"), p)
	c := mustBind(t, tb, ref, netip.MustParseAddr("127.0.6.1"), p)
	if !b.Hit || a.Server() != b.Server() {
		t.Errorf("127.0.5.200 went to %s, want %s: same /24 as 127.0.5.1", b.Server(), a.Server())
	}
	if c.Hit {
		t.Errorf("127.0.6.1 hit a template of another /24")
	}
	ls := tb.List(Filter{})
	if len(ls) != 2 || ls[0].Client != netip.MustParsePrefix("127.0.5.0/24") {
		t.Errorf("List = %+v", ls)
	}
	if n := tb.Counts(); len(n) != 1 || n[svcWeb] != 2 {
		t.Errorf("Counts = %v, want the service's 2 templates", n)
	}
}

// The expiry rule: timeout after the later of the last new connection and
// the last release, never while a connection is open.
func TestExpiry(t *testing.T) {
	const timeout = 300 * time.Second
	for _, tc := range []struct {
		name  string
		steps func(t *testing.T, tb *Table, ref ServiceRef, p Picker, clk *fakeClock) (wantHit bool)
	}{
		{"just before timeout after bind and release", func(t *testing.T, tb *Table, ref ServiceRef, p Picker, clk *fakeClock) bool {
			tb.Release(mustBind(t, tb, ref, client(1), p))
			clk.Advance(timeout - time.Nanosecond)
			return true
		}},
		{"at timeout after release", func(t *testing.T, tb *Table, ref ServiceRef, p Picker, clk *fakeClock) bool {
			tb.Release(mustBind(t, tb, ref, client(1), p))
			clk.Advance(timeout)
			return false
		}},
		{"long-lived connection holds the template", func(t *testing.T, tb *Table, ref ServiceRef, p Picker, clk *fakeClock) bool {
			l := mustBind(t, tb, ref, client(1), p)
			clk.Advance(10 * timeout)
			tb.Sweep()
			_ = l // still open
			return true
		}},
		{"timer starts at the close of the last connection", func(t *testing.T, tb *Table, ref ServiceRef, p Picker, clk *fakeClock) bool {
			l := mustBind(t, tb, ref, client(1), p)
			clk.Advance(2 * timeout)
			tb.Release(l)
			clk.Advance(timeout - time.Second)
			tb.Sweep()
			return true
		}},
		{"new connection resets the timer", func(t *testing.T, tb *Table, ref ServiceRef, p Picker, clk *fakeClock) bool {
			tb.Release(mustBind(t, tb, ref, client(1), p))
			clk.Advance(timeout - time.Second)
			tb.Release(mustBind(t, tb, ref, client(1), p))
			clk.Advance(timeout - time.Second)
			return true
		}},
		{"two connections: the later close counts", func(t *testing.T, tb *Table, ref ServiceRef, p Picker, clk *fakeClock) bool {
			a := mustBind(t, tb, ref, client(1), p)
			b := mustBind(t, tb, ref, client(1), p)
			tb.Release(a)
			clk.Advance(timeout + time.Second)
			tb.Release(b)
			clk.Advance(timeout - time.Second)
			return true
		}},
		{"sweeper frees an expired template", func(t *testing.T, tb *Table, ref ServiceRef, p Picker, clk *fakeClock) bool {
			tb.Release(mustBind(t, tb, ref, client(1), p))
			clk.Advance(timeout)
			if n := tb.Sweep(); n != 1 || tb.Len() != 0 {
				t.Errorf("Sweep freed %d, Len %d; want 1, 0", n, tb.Len())
			}
			return false
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPicker(2)
			tb, ref, clk := newTestTable(Options{}, ServiceConfig{Timeout: timeout}, p)
			defer tb.Close()
			wantHit := tc.steps(t, tb, ref, p, clk)
			l := mustBind(t, tb, ref, client(1), p)
			if l.Hit != wantHit {
				t.Errorf("hit = %v, want %v", l.Hit, wantHit)
			}
		})
	}
}

func TestUnusableServerIsRescheduled(t *testing.T) {
	for _, tc := range []struct {
		name            string
		state           ServerState
		expireQuiescent bool
		wantSame        bool
	}{
		{"up", ServerUp, false, true},
		{"quiescent honoured", ServerQuiescent, false, true},
		{"quiescent with expire_quiescent", ServerQuiescent, true, false},
		{"down", ServerDown, false, false},
		{"gone", ServerGone, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPicker(2)
			tb, ref, _ := newTestTable(Options{}, ServiceConfig{ExpireQuiescent: tc.expireQuiescent}, p)
			defer tb.Close()
			first := mustBind(t, tb, ref, client(1), p)
			tb.Release(first)
			if err := tb.SetServer(ref, first.Server(), tc.state); err != nil {
				t.Fatal(err)
			}
			if tc.state != ServerUp && tc.state != ServerQuiescent {
				p.down.Store(first.Server(), true)
			}
			if tc.state == ServerQuiescent {
				p.down.Store(first.Server(), true) // no new clients
			}
			l := mustBind(t, tb, ref, client(1), p)
			if same := l.Server() == first.Server(); same != tc.wantSame {
				t.Errorf("after %s the client went to %s (first %s); same=%v, want %v", tc.state, l.Server(), first.Server(), same, tc.wantSame)
			}
			if !tc.wantSame && tb.Stats().Invalidations != 1 {
				t.Errorf("invalidations = %d, want 1", tb.Stats().Invalidations)
			}
		})
	}
}

// The registry check on a hit is what catches a state change that raced
// with invalidation; exercise it without the eager invalidation.
func TestHitChecksServerState(t *testing.T) {
	p := newPicker(2)
	tb, ref, _ := newTestTable(Options{}, ServiceConfig{}, p)
	defer tb.Close()
	first := mustBind(t, tb, ref, client(1), p)
	tb.updateService(ref, func(s *serviceInfo) { s.states[s.index[first.Server()]] = ServerDown })
	p.down.Store(first.Server(), true)
	l := mustBind(t, tb, ref, client(1), p)
	if l.Hit || l.Server() == first.Server() {
		t.Fatalf("hit a template on a down server: %+v", l)
	}
	// The rebound template keeps counting the first connection too.
	if ls := tb.List(Filter{}); len(ls) != 1 || ls[0].Active != 2 || ls[0].Server != l.Server() {
		t.Errorf("List = %+v", ls)
	}
}

// At the bound an idle template goes before any with open connections, and
// among idle ones, approximately the least recently used: one not used
// again since it was bound goes before one a client came back to (CLOCK
// does not keep the exact order, so of 3 and 4, bound in turn and not used
// since, either may go).
func TestBoundEvictsIdleLRUFirst(t *testing.T) {
	p := newPicker(3)
	tb, ref, clk := newTestTable(Options{Capacity: 4, Shards: 1}, ServiceConfig{}, p)
	defer tb.Close()
	open := mustBind(t, tb, ref, client(1), p) // stays open: oldest, but active
	for i := 2; i <= 4; i++ {
		clk.Advance(time.Second)
		tb.Release(mustBind(t, tb, ref, client(i), p))
	}
	clk.Advance(time.Second)
	tb.Release(mustBind(t, tb, ref, client(2), p)) // 2 is now the most recently used
	clk.Advance(time.Second)
	tb.Release(mustBind(t, tb, ref, client(5), p)) // evicts 3 or 4: idle, not used again
	has := func(i int) bool { return len(tb.List(Filter{Client: client(i)})) == 1 }
	if !has(1) || !has(2) || has(3) == has(4) || !has(5) {
		t.Fatalf("after one eviction: 1=%v 2=%v 3=%v 4=%v 5=%v; want 3 or 4 evicted", has(1), has(2), has(3), has(4), has(5))
	}
	// Fill with open connections only: the active one goes only when no idle is left.
	var leases []Lease
	for i := 6; i <= 8; i++ {
		leases = append(leases, mustBind(t, tb, ref, client(i), p))
	}
	if has(1) == false || has(2) || has(4) || has(5) {
		t.Fatalf("idle templates should have gone before the active one")
	}
	leases = append(leases, mustBind(t, tb, ref, client(9), p))
	gone := 0
	for _, i := range []int{1, 6, 7, 8} {
		if !has(i) {
			gone++
		}
	}
	if gone != 1 || !has(9) || tb.Len() != 4 {
		t.Fatalf("with no idle template left exactly one active one must go: %d went, 9 present %v", gone, has(9))
	}
	if got := tb.Stats().Evictions; got != 5 {
		t.Errorf("evictions = %d, want 5", got)
	}
	// A lease of an evicted template is stale: releasing it changes nothing.
	for _, l := range append(leases, open) {
		tb.Release(l)
	}
	if tb.Len() != 4 {
		t.Errorf("Len = %d, want 4", tb.Len())
	}
	for _, tp := range tb.List(Filter{}) {
		if tp.Active != 0 {
			t.Errorf("template %v counts %d open connections after all closed", tp.Client, tp.Active)
		}
	}
}

func TestSpoofedFloodIsBounded(t *testing.T) {
	p := newPicker(3)
	tb, ref, _ := newTestTable(Options{Capacity: 1000}, ServiceConfig{}, p)
	defer tb.Close()
	for i := range 100_000 {
		tb.Release(mustBind(t, tb, ref, client(i), p))
	}
	if n := tb.Len(); n > 1000 {
		t.Fatalf("Len = %d after a flood, bound is 1000", n)
	}
}

func TestInvalidate(t *testing.T) {
	p := newPicker(2)
	tb, ref, _ := newTestTable(Options{}, ServiceConfig{}, p)
	defer tb.Close()
	other := AddrService(ProtoTCP, netip.MustParseAddrPort("198.18.0.10:443"))
	ref2 := tb.SetService(other, ServiceConfig{})
	for _, s := range p.servers {
		tb.SetServer(ref2, s, ServerUp)
	}
	p2 := newPicker(2)
	fill := func() {
		tb.Invalidate(Filter{})
		for i := range 10 {
			tb.Release(mustBind(t, tb, ref, client(i), p))
			tb.Release(mustBind(t, tb, ref2, client(i), p2))
		}
	}
	for _, tc := range []struct {
		name string
		f    Filter
		want int
	}{
		{"all", Filter{}, 20},
		{"service", Filter{Service: &other}, 10},
		{"client", Filter{Client: client(3)}, 2},
		{"server", Filter{Server: p.servers[0]}, 10},
		{"server of one service", Filter{Service: &svcWeb, Server: p.servers[0]}, 5},
		{"unknown service", Filter{Service: &Service{Mark: 9}}, 0},
	} {
		fill()
		if got := tb.Invalidate(tc.f); got != tc.want {
			t.Errorf("%s: Invalidate = %d, want %d", tc.name, got, tc.want)
		}
		if got := tb.Len(); got != 20-tc.want {
			t.Errorf("%s: Len = %d, want %d", tc.name, got, 20-tc.want)
		}
	}
	if n := tb.RemoveService(ref2); n != 10 {
		t.Errorf("RemoveService dropped %d, want 10", n)
	}
	if _, err := tb.GetOrBind(ref2, client(1), p); !errors.Is(err, ErrUnknownService) {
		t.Errorf("GetOrBind on a removed service: %v", err)
	}
}

func TestListRemainingAndChangedTimeout(t *testing.T) {
	p := newPicker(1)
	tb, ref, clk := newTestTable(Options{}, ServiceConfig{Timeout: 300 * time.Second}, p)
	defer tb.Close()
	tb.Release(mustBind(t, tb, ref, client(1), p))
	open := mustBind(t, tb, ref, client(2), p)
	clk.Advance(100 * time.Second)
	want := []Template{
		{Service: svcWeb, Client: netip.MustParsePrefix("127.0.0.1/32"), Server: p.servers[0], Remaining: 200 * time.Second},
		{Service: svcWeb, Client: netip.MustParsePrefix("127.0.0.2/32"), Server: p.servers[0], Active: 1, Remaining: 300 * time.Second},
	}
	if diff := cmp.Diff(want, tb.List(Filter{}), cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	// A shorter timeout applies to the existing template at once.
	tb.SetService(svcWeb, ServiceConfig{Timeout: 60 * time.Second})
	if l := mustBind(t, tb, ref, client(1), p); l.Hit {
		t.Errorf("template idle for 100 s survived a change of timeout to 60 s")
	}
	// A longer one too.
	tb.SetService(svcWeb, ServiceConfig{Timeout: time.Hour})
	tb.Release(open)
	clk.Advance(30 * time.Minute)
	if l := mustBind(t, tb, ref, client(2), p); !l.Hit {
		t.Errorf("template lost 30 min into a 1 h timeout")
	}
}

func TestChangedMaskDropsTemplates(t *testing.T) {
	p := newPicker(2)
	tb, ref, _ := newTestTable(Options{}, ServiceConfig{}, p)
	defer tb.Close()
	tb.Release(mustBind(t, tb, ref, client(1), p))
	m, _ := ParseMask("24", "")
	tb.SetService(svcWeb, ServiceConfig{Mask: m})
	if tb.Len() != 0 {
		t.Errorf("Len = %d after a mask change; the old keys can never be found again", tb.Len())
	}
}

func TestUnknownServerFromScheduler(t *testing.T) {
	p := newPicker(2)
	tb, ref, _ := newTestTable(Options{}, ServiceConfig{}, p)
	defer tb.Close()
	stranger := &rrPicker{servers: []netip.AddrPort{netip.MustParseAddrPort("198.18.9.9:80")}}
	_, err := tb.GetOrBind(ref, client(1), stranger)
	if !errors.Is(err, ErrUnknownServer) {
		t.Fatalf("err = %v, want ErrUnknownServer", err)
	}
	if tb.Len() != 0 {
		t.Errorf("a template was bound to an unknown server")
	}
}

func TestSweeperGoroutineStopsOnClose(t *testing.T) {
	clk := newFakeClock()
	tb := New(Options{Now: clk.Now, SweepInterval: time.Millisecond})
	p := newPicker(1)
	ref := tb.SetService(svcWeb, ServiceConfig{Timeout: time.Minute})
	tb.SetServer(ref, p.servers[0], ServerUp)
	tb.Release(mustBind(t, tb, ref, client(1), p))
	clk.Advance(time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	for tb.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the background sweeper did not free an expired template within 5 s")
		}
		time.Sleep(time.Millisecond)
	}
	tb.Close()
	select {
	case <-tb.done:
	default:
		t.Fatal("Close returned before the sweeper stopped")
	}
}

// The zero Lease (a connection that went to a sorry server, not through a
// template) must not close the template in the table's first slot.
func TestReleaseZeroLeaseIsNoop(t *testing.T) {
	p := newPicker(1)
	tb, ref, _ := newTestTable(Options{Capacity: 16, Shards: 1}, ServiceConfig{Timeout: time.Minute}, p)
	l, err := tb.GetOrBind(ref, netip.MustParseAddr("198.18.1.1"), p)
	if err != nil {
		t.Fatal(err)
	}
	tb.Release(Lease{})
	if got := tb.List(Filter{}); len(got) != 1 || got[0].Active != 1 {
		t.Fatalf("after Release(Lease{}): %+v, want one template with 1 open connection", got)
	}
	tb.Release(l)
	if got := tb.List(Filter{}); len(got) != 1 || got[0].Active != 0 {
		t.Fatalf("after the real release: %+v, want 0 open connections", got)
	}
}

// A table sized for a million templates that holds a few costs little:
// its shards' slot arrays grow with what they hold.
func TestNearlyEmptyTableIsSmall(t *testing.T) {
	p := newPicker(2)
	tb, ref, _ := newTestTable(Options{Capacity: 1 << 20, Shards: 8}, ServiceConfig{Timeout: time.Minute}, p)
	for i := range 100 {
		l, err := tb.GetOrBind(ref, client(i), p)
		if err != nil {
			t.Fatal(err)
		}
		tb.Release(l)
	}
	if r := tb.residentMapped(); r < 0 || r > 1<<20 {
		t.Errorf("100 templates hold %d bytes of mapped memory, want under 1 MiB", r)
	}
}

// A large table's shards that fill go to the arena, off the heap, at their
// final length, and their templates with them: every client finds its
// server again, and each lease taken before the move releases its own.
func TestFullShardsMoveToTheArena(t *testing.T) {
	p := newPicker(5)
	tb, ref, _ := newTestTable(Options{Capacity: 1 << 16, Shards: 4, arenaMin: 1}, ServiceConfig{Timeout: time.Minute}, p)
	const n = 40_000 // 10 000 a shard: more than half its final array
	servers := make([]netip.AddrPort, n)
	leases := make([]Lease, n)
	for i := range n {
		leases[i] = mustBind(t, tb, ref, client(i), p)
		servers[i] = leases[i].Server()
	}
	lo := uintptr(unsafe.Pointer(&tb.arena[0]))
	for i := range tb.shards {
		sh := &tb.shards[i]
		if a := uintptr(unsafe.Pointer(&sh.ents[0])); a < lo || a >= lo+uintptr(len(tb.arena)) || len(sh.ents) != sh.maxLen() {
			t.Fatalf("shard %d: %d slots at %#x, want its final %d in the arena", i, len(sh.ents), a, sh.maxLen())
		}
	}
	if r := tb.residentMapped(); r < n*32 {
		t.Fatalf("%d bytes of the arena resident, want at least %d", r, n*32)
	}
	for i := range n {
		l := mustBind(t, tb, ref, client(i), p)
		if !l.Hit || l.Server() != servers[i] {
			t.Fatalf("client %d: %v (hit %v), want %v", i, l.Server(), l.Hit, servers[i])
		}
		tb.Release(l)
		tb.Release(leases[i])
	}
	for _, tp := range tb.List(Filter{}) {
		if tp.Active != 0 {
			t.Fatalf("%v: %d open connections after every lease was released", tp.Client, tp.Active)
		}
	}
}

// Templates move in their shard's slot array when others are removed and
// when it grows. A lease taken before the move must still release its own
// template, and no other.
func TestLeaseFollowsMovedTemplate(t *testing.T) {
	// On the heap, and into the arena: the last growth moves the array
	// to the shard's region there.
	for _, arena := range []int{0, 1} {
		t.Run(fmt.Sprintf("arena=%v", arena > 0), func(t *testing.T) {
			testLeaseFollowsMovedTemplate(t, Options{Capacity: 4096, Shards: 1, arenaMin: arena})
		})
	}
}

func testLeaseFollowsMovedTemplate(t *testing.T, o Options) {
	p := newPicker(3)
	tb, ref, _ := newTestTable(o, ServiceConfig{Timeout: time.Minute}, p)
	const n = 3000 // the array grows from 16 slots eight times on the way (into the arena)
	leases := make([]Lease, n)
	for i := range n {
		l, err := tb.GetOrBind(ref, client(i), p)
		if err != nil {
			t.Fatal(err)
		}
		leases[i] = l
	}
	// Every third client's template goes; the gaps pull others back.
	for i := 0; i < n; i += 3 {
		tb.Invalidate(Filter{Client: client(i)})
	}
	for i := 1; i < n; i += 3 {
		tb.Release(leases[i])
	}
	open := 0
	for _, tp := range tb.List(Filter{}) {
		i := int(tp.Client.Addr().As4()[2])<<8 | int(tp.Client.Addr().As4()[3])
		want := 1
		if i%3 == 1 {
			want = 0
		}
		if tp.Active != want {
			t.Fatalf("client %d: %d open connections, want %d", i, tp.Active, want)
		}
		open += tp.Active
	}
	if open != n/3 {
		t.Fatalf("%d open connections left, want %d", open, n/3)
	}
	// A lease of an invalidated template releases nothing, also when
	// another template now sits in its slot.
	for i := 0; i < n; i += 3 {
		tb.Release(leases[i])
	}
	if got := tb.List(Filter{}); len(got) != 2*n/3 {
		t.Fatalf("%d templates, want %d", len(got), 2*n/3)
	} else {
		for _, tp := range got {
			open -= tp.Active
		}
		if open != 0 {
			t.Fatalf("stale leases closed %d connections of other templates", open)
		}
	}
}

// Approximate LRU under a flood: the table is at its bound, a hot tenth of
// its clients keeps reconnecting, and new spoofed sources ten times the
// capacity pour in. No hot client ever loses its template, and the table
// stays within its bound. Time passes as connections come (a tick each),
// so that recency is not a tie: within one tick, idle templates nobody came
// back to are all equally old.
func TestHotClientsSurviveAFlood(t *testing.T) {
	const capacity, hot = 10_000, 1_000
	p := newPicker(3)
	tb, ref, clk := newTestTable(Options{Capacity: capacity}, ServiceConfig{Timeout: time.Hour}, p)
	defer tb.Close()
	for i := range capacity { // the bound is per shard: the fullest evict already
		clk.Advance(tick)
		tb.Release(mustBind(t, tb, ref, client(i), p))
	}
	home := map[int]netip.AddrPort{}
	for h := range hot { // the hot set is hot before the flood too
		clk.Advance(tick)
		l := mustBind(t, tb, ref, client(h), p)
		home[h] = l.Server()
		tb.Release(l)
	}
	for i := range 10 * capacity {
		clk.Advance(tick)
		tb.Release(mustBind(t, tb, ref, client(capacity+i), p)) // a new source
		h := i % hot
		l := mustBind(t, tb, ref, client(h), p)
		if !l.Hit || l.Server() != home[h] {
			t.Fatalf("after %d flood sources hot client %d lost its template (hit %v, server %s, was %s)", i+1, h, l.Hit, l.Server(), home[h])
		}
		tb.Release(l)
	}
	if n := tb.Len(); n > capacity {
		t.Errorf("Len = %d, bound %d", n, capacity)
	}
}

// MaxClientConns bounds the open connections of one client group: one more
// is refused with ErrClientLimit and counted, another group is not
// affected, and a release makes room again on the same server.
func TestMaxClientConns(t *testing.T) {
	p := newPicker(3)
	m, _ := ParseMask("255.255.255.0", "")
	tb, ref, _ := newTestTable(Options{}, ServiceConfig{Mask: m, MaxClientConns: 2}, p)
	defer tb.Close()
	a := mustBind(t, tb, ref, netip.MustParseAddr("127.0.5.1"), p)
	mustBind(t, tb, ref, netip.MustParseAddr("127.0.5.2"), p)
	if _, err := tb.GetOrBind(ref, netip.MustParseAddr("127.0.5.3"), p); !errors.Is(err, ErrClientLimit) {
		t.Fatalf("third connection of 127.0.5.0/24: %v, want ErrClientLimit", err)
	}
	mustBind(t, tb, ref, netip.MustParseAddr("127.0.6.1"), p) // another group
	if s := tb.Stats(); s.ClientLimited != 1 {
		t.Errorf("ClientLimited = %d, want 1", s.ClientLimited)
	}
	tb.Release(a)
	l := mustBind(t, tb, ref, netip.MustParseAddr("127.0.5.3"), p)
	if !l.Hit || l.Server() != a.Server() {
		t.Errorf("after a release: %s hit %v, want the group's server %s", l.Server(), l.Hit, a.Server())
	}
}
