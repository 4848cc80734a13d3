package affinity

import (
	"errors"
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
	f, err := tb.Follow(4*len(tb.shards), false) // four a shard
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	wake := f.Wake()
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
	got, lost := f.Changes(nil)
	want := []Change{
		{Kind: Busy, Service: svcWeb, Client: c, Server: l.Server()},
		{Kind: Idle, Service: svcWeb, Client: c, Server: l.Server(), Timeout: time.Minute},
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
	if got, _ := f.Changes(nil); len(got) != 0 {
		t.Errorf("a second drain gave %+v", got)
	}
	// Five changes of one template overflow its shard's ring of four.
	for range 3 {
		tb.Release(mustBind(t, tb, ref, c, p))
	}
	got, lost = f.Changes(nil)
	if !lost || len(got) != 4 {
		t.Errorf("after an overflow: %d changes, lost %v; want 4, true", len(got), lost)
	}
}

// Two followers at once (the director's mirror and the cluster): each gets
// the changes it asked for, one does not drain the other's, and a third
// is refused.
func TestJournalTwoFollowers(t *testing.T) {
	p := newPicker(2)
	tb, ref, _ := newTestTable(Options{}, ServiceConfig{Timeout: time.Minute, Journal: true}, p)
	defer tb.Close()
	other := tb.SetService(AddrService(ProtoTCP, netip.MustParseAddrPort("198.18.0.11:80")), ServiceConfig{})
	for _, s := range p.servers {
		tb.SetServer(other, s, ServerUp)
	}
	journaled, all := follow(t, tb, 8, false), follow(t, tb, 8, true)
	if _, err := tb.Follow(8*len(tb.shards), true); !errors.Is(err, ErrFollowers) {
		t.Fatalf("a third follower: %v, want ErrFollowers", err)
	}
	c := netip.MustParseAddr("127.0.0.7")
	tb.Release(mustBind(t, tb, ref, c, p))
	tb.Release(mustBind(t, tb, other, c, p))
	if got, _ := journaled.Changes(nil); len(got) != 2 || got[0].Service != svcWeb {
		t.Errorf("journaled follower got %+v, want Busy and Idle of %s", got, svcWeb)
	}
	got, _ := all.Changes(nil)
	if len(got) != 4 {
		t.Fatalf("all-services follower got %+v, want 4 changes", got)
	}
	all.Close()
	if _, err := tb.Follow(8*len(tb.shards), true); err != nil {
		t.Errorf("following after a Close: %v", err)
	}
}

// A follower's rings start small and grow to its limit only as a burst
// between two drains needs: the changes of the burst come out whole and in
// order, and one more than the shard's share is lost, as before.
func TestJournalRingsGrowWithUse(t *testing.T) {
	p := newPicker(2)
	tb, ref, clk := newTestTable(Options{}, ServiceConfig{Timeout: time.Minute, Journal: true}, p)
	defer tb.Close()
	const share = 64
	f := follow(t, tb, share, false)
	rings := func() (total, biggest int) {
		for i := range tb.shards {
			sh := &tb.shards[i]
			sh.mu.Lock()
			n := len(sh.jr[f.slot].ring)
			sh.mu.Unlock()
			total += n
			biggest = max(biggest, n)
		}
		return total, biggest
	}
	if total, _ := rings(); total != len(tb.shards)*ringStart {
		t.Fatalf("a new follower holds %d changes' room in %d shards, want %d", total, len(tb.shards), len(tb.shards)*ringStart)
	}
	c := netip.MustParseAddr("127.0.0.7")
	var want []ChangeKind
	for range share / 2 { // a close and a return, 2 changes each, one shard
		clk.Advance(time.Second)
		tb.Release(mustBind(t, tb, ref, c, p))
		want = append(want, Busy, Idle)
	}
	if total, biggest := rings(); biggest != share || total != (len(tb.shards)-1)*ringStart+share {
		t.Errorf("after a burst of %d in one shard: rings of %d in all, the biggest %d; want %d and %d", share, total, biggest, (len(tb.shards)-1)*ringStart+share, share)
	}
	got, lost := f.Changes(nil)
	if lost || len(got) != len(want) {
		t.Fatalf("%d changes (lost %v), want %d", len(got), lost, len(want))
	}
	for i, g := range got {
		if g.Kind != want[i] || (i > 0 && g.At.Before(got[i-1].At)) {
			t.Fatalf("change %d: %v at %v after %v at %v: out of order", i, g.Kind, g.At, got[max(i-1, 0)].Kind, got[max(i-1, 0)].At)
		}
	}
	for range share/2 + 1 {
		clk.Advance(time.Second)
		tb.Release(mustBind(t, tb, ref, c, p))
	}
	if got, lost := f.Changes(nil); !lost || len(got) != share {
		t.Errorf("a burst past the share: %d changes, lost %v; want %d, true", len(got), lost, share)
	}
}
