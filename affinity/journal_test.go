package affinity

import (
	"net/netip"
	"testing"
	"time"
)

// The journal records, in order, what happens to a journaled service's
// templates (bind, close, return, invalidation) and nothing of another
// service's; an overflowing ring says so.
func TestJournal(t *testing.T) {
	p := newPicker(2)
	tb, ref, clk := newTestTable(Options{}, ServiceConfig{Timeout: time.Minute, Journal: true}, p)
	defer tb.Close()
	other := tb.SetService(AddrService(ProtoTCP, netip.MustParseAddrPort("198.18.0.11:80")), ServiceConfig{})
	for _, s := range p.servers {
		tb.SetServer(other, s, ServerUp)
	}
	wake := tb.Follow(4)
	c := netip.MustParseAddr("127.0.0.7")
	l := mustBind(t, tb, ref, c, p)
	l2 := mustBind(t, tb, ref, c, p) // a second connection: still busy, nothing new
	tb.Release(mustBind(t, tb, other, c, p))
	select {
	case <-wake:
	default:
		t.Fatal("no wake-up after a change")
	}
	clk.Advance(time.Second)
	tb.Release(l)
	tb.Release(l2)
	if n := tb.Invalidate(Filter{Client: c}); n != 2 {
		t.Fatalf("invalidated %d, want 2", n)
	}
	got, lost := tb.Changes(nil)
	want := []Change{
		{Kind: Busy, Service: svcWeb, Client: c, Server: l.Server},
		{Kind: Idle, Service: svcWeb, Client: c, Server: l.Server, Timeout: time.Minute},
		{Kind: Dropped, Service: svcWeb, Client: c},
	}
	if lost || len(got) != len(want) {
		t.Fatalf("changes %+v (lost %v), want %+v", got, lost, want)
	}
	for i, w := range want {
		g := got[i]
		g.At = time.Time{}
		if g != w {
			t.Errorf("change %d: %+v, want %+v", i, g, w)
		}
	}
	if got[1].At.Sub(got[0].At) != time.Second {
		t.Errorf("Idle at %v, Busy at %v: want a second apart", got[1].At, got[0].At)
	}
	if got, _ := tb.Changes(nil); len(got) != 0 {
		t.Errorf("a second drain gave %+v", got)
	}
	// Five changes of one template overflow its shard's ring of four.
	for range 3 {
		tb.Release(mustBind(t, tb, ref, c, p))
	}
	got, lost = tb.Changes(nil)
	if !lost || len(got) != 4 {
		t.Errorf("after an overflow: %d changes, lost %v; want 4, true", len(got), lost)
	}
}
