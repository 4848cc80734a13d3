package affinity

import (
	"net/netip"
	"testing"
	"time"
)

// A connection the kernel served and closed restarts its template's timer
// as a release would, tells the cluster's follower and the kernel map's,
// binds an absent or expired
// template to the kernel's server (telling both), and leaves a template
// bound elsewhere alone.
func TestTouch(t *testing.T) {
	p := newPicker(2)
	tb, ref, clk := newTestTable(Options{}, ServiceConfig{Timeout: time.Minute, Journal: true}, p)
	defer tb.Close()
	mirror, peers := follow(t, tb, 64, false), follow(t, tb, 64, true)
	drain := func(f *Follower) []Change {
		out, _ := f.Changes(nil)
		return out
	}
	c := netip.MustParseAddr("127.0.0.9")
	calls := p.calls.Load()
	if !tb.Touch(ref, c, p.servers[1]) {
		t.Fatal("Touch of an absent template: not bound")
	}
	if m, c := drain(mirror), drain(peers); len(m) != 1 || m[0].Kind != Idle || m[0].Server != p.servers[1] || len(c) != 1 {
		t.Fatalf("a new template: mirror %+v, cluster %+v; want one idle change each", m, c)
	}
	clk.Advance(50 * time.Second)
	if !tb.Touch(ref, c, p.servers[1]) {
		t.Fatal("Touch of its own template: not bound")
	}
	if m, c := drain(mirror), drain(peers); len(m) != 1 || m[0].Kind != Idle || len(c) != 1 || c[0].Kind != Idle {
		t.Fatalf("a touch: mirror %+v, cluster %+v; want one idle change each", m, c)
	}
	busy := mustBind(t, tb, ref, c, p)
	drain(mirror)
	drain(peers)
	tb.Touch(ref, c, p.servers[1])
	if m, c := drain(mirror), drain(peers); len(m) != 0 || len(c) != 0 {
		t.Errorf("a touch of a busy template: mirror %+v, cluster %+v; want nothing (its element has no timer)", m, c)
	}
	tb.Release(busy)
	clk.Advance(50 * time.Second) // 100 s after the first touch, 50 after the second
	l := mustBind(t, tb, ref, c, p)
	if !l.Hit || l.Server() != p.servers[1] || p.calls.Load() != calls {
		t.Fatalf("50 s after a touch (timeout 60 s): %+v, scheduler asked %d times; want the touched template", l, p.calls.Load()-calls)
	}
	tb.Release(l)
	if tb.Touch(ref, c, p.servers[0]) {
		t.Error("Touch with another server replaced a live template")
	}
	if tps := tb.List(Filter{}); len(tps) != 1 || tps[0].Server != p.servers[1] {
		t.Errorf("templates %+v, want the one bound to %s", tps, p.servers[1])
	}
	drain(mirror)
	clk.Advance(2 * time.Minute) // expired
	if !tb.Touch(ref, c, p.servers[0]) {
		t.Fatal("Touch of an expired template: not bound")
	}
	if tps := tb.List(Filter{}); len(tps) != 1 || tps[0].Server != p.servers[0] {
		t.Errorf("after the expired template's touch: %+v, want it bound to %s", tps, p.servers[0])
	}
	if m := drain(mirror); len(m) != 1 || m[0].Server != p.servers[0] {
		t.Errorf("the kernel map was told %+v, want the new binding", m)
	}
	tb.SetServer(ref, p.servers[1], ServerDown)
	if tb.Touch(ref, netip.MustParseAddr("127.0.0.10"), p.servers[1]) {
		t.Error("Touch bound a client to a server that is down")
	}
}

// A conntrack scan touches a template for every flow of its client that
// closed since the last scan: the kernel map's follower hears of it once
// a tick, not once a flow (each change is an element written), and the
// cluster's every time.
func TestTouchesInOneTickWriteOneElement(t *testing.T) {
	p := newPicker(2)
	tb, ref, clk := newTestTable(Options{}, ServiceConfig{Timeout: time.Minute, Journal: true}, p)
	defer tb.Close()
	mirror, peers := follow(t, tb, 64, false), follow(t, tb, 64, true)
	c := netip.MustParseAddr("127.0.0.9")
	l := mustBind(t, tb, ref, c, p)
	tb.Release(l)
	mirror.Changes(nil)
	peers.Changes(nil)
	clk.Advance(time.Second)
	for range 5 {
		if !tb.Touch(ref, c, l.Server()) {
			t.Fatal("Touch of its own template: not bound")
		}
	}
	m, _ := mirror.Changes(nil)
	cl, _ := peers.Changes(nil)
	if len(m) != 1 || m[0].Kind != Idle || len(cl) != 5 {
		t.Fatalf("five touches in one tick: mirror %+v, cluster %d changes; want one idle change, and five", m, len(cl))
	}
	clk.Advance(tick)
	tb.Touch(ref, c, l.Server())
	if m, _ := mirror.Changes(nil); len(m) != 1 {
		t.Fatalf("a touch a tick later: mirror %+v; want one change", m)
	}
}
