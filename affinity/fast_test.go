package affinity

import (
	"testing"
	"time"
)

// A lock holder that binds an expired template anew holds it frozen
// meanwhile: a lock-free hit that read the clock before the template
// expired (so it judges it live) fails instead of counting a connection
// to the old server on it, and a hit after the rebind gets the new one.
func TestHitDuringARebindFails(t *testing.T) {
	p := newPicker(2)
	tb, ref, clk := newTestTable(Options{}, ServiceConfig{Timeout: time.Minute}, p)
	defer tb.Close()
	c := client(7)
	tb.Release(mustBind(t, tb, ref, c, p))
	before := tb.nowTicks()
	clk.Advance(2 * time.Minute)
	now := tb.nowTicks()

	r := tb.reg.Load()
	svc, _ := r.service(ref)
	k := clientKey(ref, svc.cfg.Mask, c)
	h, sh := tb.shardOf(k)
	sh.mu.Lock()
	i, ok := sh.get(k, h)
	if !ok {
		sh.mu.Unlock()
		t.Fatal("template missing")
	}
	e := &sh.ents[i]
	old := e.server()
	live, held := e.hold(now, svc.timeout)
	if live || !held {
		sh.mu.Unlock()
		t.Fatalf("hold of an expired idle template: live %v, held %v", live, held)
	}
	if l, ok := hitOf(sh, tb, k, h, before, svc); ok {
		sh.mu.Unlock()
		t.Fatalf("a lock-free hit counted a connection to %v on a template being bound anew", l.Server())
	}
	e.setServer(uint32(1 - old))
	e.thaw()
	sh.mu.Unlock()

	l, ok := hitOf(sh, tb, k, h, before, svc)
	if !ok || l.Server() != svc.servers[1-old] {
		t.Fatalf("hit after the rebind: ok %v, server %v, want %v", ok, l.Server(), svc.servers[1-old])
	}
	if n, _ := tb.held(l); n != 1 {
		t.Fatalf("the template counts %d connections, want 1", n)
	}
}

// hitOf is hit's answer as GetOrBind makes it.
func hitOf(sh *shard, t *Table, k key, h uint64, now uint32, svc *serviceInfo) (Lease, bool) {
	i, gen, srv, ok := sh.hit(t, k, h, now, svc)
	if !ok {
		return Lease{}, false
	}
	return hitLease(svc, h, i, gen, srv), true
}

// A lock-free hit stamps its template with the new connection's time, in
// the same step as it counts the connection: an invalidation of the
// templates not used since an earlier time spares it, while it is open
// and after it closes.
func TestLockFreeHitStamps(t *testing.T) {
	p := newPicker(2)
	tb, ref, clk := newTestTable(Options{}, ServiceConfig{Timeout: time.Hour}, p)
	defer tb.Close()
	c := client(7)
	t0 := clk.Now()
	tb.Release(mustBind(t, tb, ref, c, p))
	clk.Advance(time.Minute)

	r := tb.reg.Load()
	svc, _ := r.service(ref)
	k := clientKey(ref, svc.cfg.Mask, c)
	h, sh := tb.shardOf(k)
	l, ok := hitOf(sh, tb, k, h, tb.nowTicks(), svc)
	if !ok {
		t.Fatal("no lock-free hit on an idle live template")
	}
	if n := tb.Invalidate(Filter{UsedBefore: t0.Add(30 * time.Second)}); n != 0 {
		t.Fatalf("invalidated %d templates used since the cut, want 0", n)
	}
	if n, _ := tb.held(l); n != 1 {
		t.Fatalf("the template counts %d connections, want 1", n)
	}
	clk.Advance(time.Minute)
	tb.Release(l)
	if n := tb.Invalidate(Filter{UsedBefore: t0.Add(90 * time.Second)}); n != 0 {
		t.Fatalf("invalidated %d templates closed after the cut, want 0", n)
	}
	if n := tb.Invalidate(Filter{UsedBefore: t0.Add(150 * time.Second)}); n != 1 {
		t.Fatalf("invalidated %d templates not used since a later cut, want 1", n)
	}
}
