package affinity

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// A peer's template is added where none is, and a returning client then
// goes to the peer's server without asking the scheduler.
func TestAdoptAdds(t *testing.T) {
	p := newPicker(3)
	tb, ref, _ := newTestTable(Options{}, ServiceConfig{Timeout: time.Minute}, p)
	defer tb.Close()
	c := netip.MustParseAddr("127.0.0.9")
	a := tb.Adopt(svcWeb, c, p.servers[2], time.Minute, false)
	out, got := a.Outcome, a.Server
	if out != Added || got != p.servers[2] {
		t.Fatalf("Adopt: %v %s, want added %s", out, got, p.servers[2])
	}
	calls := p.calls.Load()
	l := mustBind(t, tb, ref, c, p)
	if !l.Hit || l.Server() != p.servers[2] || p.calls.Load() != calls {
		t.Fatalf("after Adopt: %+v (scheduler asked %d times)", l, p.calls.Load()-calls)
	}
	tb.Release(l)
	if out := tb.Adopt(svcWeb, c, p.servers[2], time.Minute, false).Outcome; out != Same {
		t.Errorf("the same template again: %v, want same", out)
	}
}

// Unknown services and servers, and servers that are down here, change
// nothing.
func TestAdoptIgnoresUnknown(t *testing.T) {
	p := newPicker(2)
	tb, ref, _ := newTestTable(Options{}, ServiceConfig{}, p)
	defer tb.Close()
	c := netip.MustParseAddr("127.0.0.9")
	other := AddrService(ProtoTCP, netip.MustParseAddrPort("198.18.0.99:80"))
	for name, try := range map[string]func() Outcome{
		"service": func() Outcome { return tb.Adopt(other, c, p.servers[0], 0, false).Outcome },
		"server": func() Outcome {
			return tb.Adopt(svcWeb, c, netip.MustParseAddrPort("198.18.9.9:80"), 0, false).Outcome
		},
		"down": func() Outcome {
			tb.SetServer(ref, p.servers[1], ServerDown)
			return tb.Adopt(svcWeb, c, p.servers[1], 0, false).Outcome
		},
	} {
		if o := try(); o != Ignored {
			t.Errorf("unknown %s: %v, want ignored", name, o)
		}
	}
	if tb.Len() != 0 {
		t.Errorf("%d templates after ignored adoptions", tb.Len())
	}
}

// Two instances that bound the same clients to different servers end on
// the same server for each, whichever order they hear each other in: the
// higher Score wins, and a server that is down here always loses.
func TestAdoptConflictConverges(t *testing.T) {
	p := newPicker(4)
	rnd := rand.New(rand.NewPCG(5, 6))
	for i := range 200 {
		c := client(i)
		a, b := p.servers[rnd.IntN(4)], p.servers[rnd.IntN(4)]
		want := a
		if Score(c, b) > Score(c, a) {
			want = b
		}
		for _, order := range [][2]netip.AddrPort{{a, b}, {b, a}} {
			tb, _, _ := newTestTable(Options{}, ServiceConfig{}, p)
			tb.Adopt(svcWeb, c, order[0], time.Minute, false)
			a := tb.Adopt(svcWeb, c, order[1], time.Minute, false)
			out, got := a.Outcome, a.Server
			if got != want {
				t.Fatalf("client %s, %s then %s: %s (%v), want %s", c, order[0], order[1], got, out, want)
			}
			// Repetition changes nothing.
			if again := tb.Adopt(svcWeb, c, order[0], time.Minute, false).Server; again != want {
				t.Fatalf("client %s: %s heard again moved it to %s", c, order[0], again)
			}
			tb.Close()
		}
	}
	tb, ref, _ := newTestTable(Options{}, ServiceConfig{}, p)
	defer tb.Close()
	c := client(1)
	lo, hi := p.servers[0], p.servers[1]
	if Score(c, lo) > Score(c, hi) {
		lo, hi = hi, lo
	}
	tb.Adopt(svcWeb, c, hi, time.Minute, false)
	tb.SetServer(ref, hi, ServerDown)
	if a := tb.Adopt(svcWeb, c, lo, time.Minute, false); a.Server != lo || a.Outcome == Kept {
		out, got := a.Outcome, a.Server
		t.Errorf("a peer's usable server against one down here: %s (%v), want %s", got, out, lo)
	}
}

// A peer's open connections keep the template alive here past its
// timeout; once the peer releases, it expires a timeout later. An idle
// peer template keeps the time it had left.
func TestAdoptHoldAndIdle(t *testing.T) {
	p := newPicker(2)
	tb, _, clk := newTestTable(Options{}, ServiceConfig{Timeout: time.Minute}, p)
	defer tb.Close()
	c := netip.MustParseAddr("127.0.0.9")
	l := tb.Adopt(svcWeb, c, p.servers[0], time.Minute, true).Lease
	clk.Advance(10 * time.Minute)
	if got := tb.List(Filter{Client: c}); len(got) != 1 || got[0].Active != 0 || got[0].Peers != 1 {
		t.Fatalf("held template after 10 min: %+v", got)
	}
	tb.ReleasePeer(l)
	clk.Advance(59 * time.Second)
	if len(tb.List(Filter{Client: c})) != 1 {
		t.Fatal("gone 59 s after the peer's release")
	}
	clk.Advance(2 * time.Second)
	if got := tb.List(Filter{Client: c}); len(got) != 0 {
		t.Fatalf("alive 61 s after the peer's release: %+v", got)
	}
	c2 := netip.MustParseAddr("127.0.0.10")
	tb.Adopt(svcWeb, c2, p.servers[1], 10*time.Second, false)
	got := tb.List(Filter{Client: c2})
	if len(got) != 1 || got[0].Remaining > 10*time.Second || got[0].Remaining < 9*time.Second {
		t.Fatalf("a template idle 50 s at the peer: %+v, want about 10 s left", got)
	}
}

// What a peer said is not reported back to the cluster's follower (it
// would echo between instances forever), but the director's is told.
func TestAdoptNotEchoed(t *testing.T) {
	p := newPicker(2)
	tb, ref, _ := newTestTable(Options{}, ServiceConfig{Journal: true}, p)
	defer tb.Close()
	cluster, mirror := follow(t, tb, 16, true), follow(t, tb, 16, false)
	c := netip.MustParseAddr("127.0.0.9")
	l := tb.Adopt(svcWeb, c, p.servers[0], 0, true).Lease
	tb.ReleasePeer(l)
	if got, _ := cluster.Changes(nil); len(got) != 0 {
		t.Errorf("the cluster heard a peer's change back: %+v", got)
	}
	if got, _ := mirror.Changes(nil); len(got) != 2 {
		t.Errorf("the mirror heard %+v, want Busy and Idle", got)
	}
	tb.Release(mustBind(t, tb, ref, c, p))
	if got, _ := cluster.Changes(nil); len(got) != 2 {
		t.Errorf("a local connection: the cluster heard %+v, want Busy and Idle", got)
	}
	mirror.Changes(nil)
	// While a peer holds it, a local connection is news to the cluster
	// (this instance has it open now), not to the kernel mirror.
	l = tb.Adopt(svcWeb, c, p.servers[0], 0, true).Lease
	mirror.Changes(nil)
	tb.Release(mustBind(t, tb, ref, c, p))
	if got, _ := cluster.Changes(nil); len(got) != 2 || got[0].Kind != Busy || got[1].Kind != Idle {
		t.Errorf("a local connection while a peer holds: the cluster heard %+v, want Busy and Idle", got)
	}
	if got, _ := mirror.Changes(nil); len(got) != 0 {
		t.Errorf("a local connection while a peer holds: the mirror heard %+v", got)
	}
	tb.ReleasePeer(l)
	if got, _ := mirror.Changes(nil); len(got) != 1 || got[0].Kind != Idle {
		t.Errorf("the peer's release: the mirror heard %+v, want Idle", got)
	}
}

// A table filled in another's slot order (a peer's full state is exported
// that way) does not receive its keys in its own hash order: each table
// hashes with its own seed. With one hash for all, every key landed at the
// end of one growing cluster while the array was smaller than the state,
// and merging a million templates took 27 s instead of 0.6 s.
func TestFillInAnotherTablesOrder(t *testing.T) {
	p := newPicker(3)
	const n = 20000
	a, ref, _ := newTestTable(Options{Capacity: 2 * n, Shards: 4}, ServiceConfig{Timeout: time.Hour}, p)
	defer a.Close()
	for i := range n {
		a.Release(mustBind(t, a, ref, client(i), p))
	}
	b, _, _ := newTestTable(Options{Capacity: 2 * n, Shards: 4}, ServiceConfig{Timeout: time.Hour}, p)
	defer b.Close()
	// Where each key of a's export order goes in b: shard, then home in
	// an array of 1<<16.
	var prev uint64
	ascending, total := 0, 0
	buf := make([]Template, 0, 1024)
	for cur := uint64(0); ; {
		var ts []Template
		ts, cur = a.Export(cur, buf)
		for _, tm := range ts {
			k := makeKey(ref, tm.Client.Addr())
			h := k.hash(b.seed)
			pos := (h&b.mask)<<32 | (h>>32)*(1<<16)>>32
			if total > 0 && pos >= prev {
				ascending++
			}
			prev = pos
			total++
		}
		if cur == 0 {
			break
		}
	}
	if total != n {
		t.Fatalf("exported %d templates, want %d", total, n)
	}
	if f := float64(ascending) / float64(total); f > 0.6 {
		t.Fatalf("%.0f%% of another table's export order is in this table's own order", 100*f)
	}
}

// Filter.UsedBefore selects only the templates not used since: a
// connection opened or closed after it spares its template.
func TestInvalidateUsedBefore(t *testing.T) {
	p := newPicker(2)
	tb, ref, clk := newTestTable(Options{}, ServiceConfig{Timeout: time.Hour}, p)
	defer tb.Close()
	t0 := clk.Now()
	idle, closed, open := client(1), client(2), client(3)
	tb.Release(mustBind(t, tb, ref, idle, p))
	l := mustBind(t, tb, ref, closed, p)
	busy := mustBind(t, tb, ref, open, p)
	clk.Advance(time.Minute)
	tb.Release(l) // closed after the cut: used since
	if n := tb.Invalidate(Filter{UsedBefore: t0.Add(30 * time.Second)}); n != 2 {
		t.Fatalf("invalidated %d, want 2 (the idle one and the open one not used since)", n)
	}
	if got := tb.List(Filter{}); len(got) != 1 || got[0].Client.Addr() != closed {
		t.Fatalf("left %+v, want only %s", got, closed)
	}
	tb.Release(busy)
}

// A peer's template adopted at the bound evicts like a local bind: the
// templates in the table are aged against now, not against the peer's
// older timer (which made every fresher template look expired).
func TestAdoptAtTheBoundEvicts(t *testing.T) {
	p := newPicker(2)
	tb, ref, _ := newTestTable(Options{Capacity: 32, Shards: 1}, ServiceConfig{Timeout: time.Minute}, p)
	defer tb.Close()
	for i := range 32 {
		tb.Release(mustBind(t, tb, ref, client(i), p))
	}
	if a := tb.Adopt(svcWeb, client(100), p.servers[0], 30*time.Second, false); a.Outcome != Added {
		t.Fatalf("Adopt: %v", a.Outcome)
	}
	if s := tb.Stats(); s.Evictions != 1 || s.Expirations != 0 {
		t.Fatalf("evictions %d, expirations %d: want one eviction of a live template", s.Evictions, s.Expirations)
	}
}
