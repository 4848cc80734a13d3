package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherlb/tether/api"

	"github.com/tetherlb/tether/affinity"
)

var (
	svc     = affinity.AddrService(affinity.ProtoTCP, netip.MustParseAddrPort("198.18.0.10:80"))
	servers = []netip.AddrPort{
		netip.MustParseAddrPort("198.18.1.1:80"),
		netip.MustParseAddrPort("198.18.1.2:80"),
		netip.MustParseAddrPort("198.18.1.3:80"),
	}
)

// picker is round robin from an offset, so that two instances pick
// differently for the same client.
type picker struct{ next atomic.Uint64 }

func (p *picker) Pick(netip.Addr) (netip.AddrPort, error) {
	return servers[p.next.Add(1)%uint64(len(servers))], nil
}

// clock is an injected clock the test moves.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// instance is a node with its own table, clock and scheduler.
type instance struct {
	*Node
	table *affinity.Table
	clk   *clock
	ref   affinity.ServiceRef
	p     *picker
}

func client(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}) }

// start runs an instance on loopback joining join (none: the first).
func start(t *testing.T, name string, key []byte, join ...*instance) *instance {
	t.Helper()
	return startWith(t, name, key, nil, join...)
}

// startWith is start with edit applied to the node's Config.
func startWith(t *testing.T, name string, key []byte, edit func(*Config), join ...*instance) *instance {
	t.Helper()
	clk := &clock{now: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)}
	tb := affinity.New(affinity.Options{Capacity: 1 << 16, Now: clk.Now, SweepInterval: -1})
	ref := tb.SetService(svc, affinity.ServiceConfig{Timeout: time.Minute})
	for _, s := range servers {
		if err := tb.SetServer(ref, s, affinity.ServerUp); err != nil {
			t.Fatal(err)
		}
	}
	var addrs []string
	for _, j := range join {
		addrs = append(addrs, j.Addr().String())
	}
	cfg := Config{
		Name: name, Bind: netip.MustParseAddrPort("127.0.0.1:0"), Join: addrs, SecretKey: key, Label: "test",
		Table: tb, JoinTimeout: 5 * time.Second, Logger: slog.New(slog.NewTextHandler(newTestLog(t), &slog.HandlerOptions{Level: slog.LevelDebug})),
		GossipInterval: 20 * time.Millisecond, ProbeInterval: 200 * time.Millisecond, PushPullInterval: time.Hour,
	}
	if edit != nil {
		edit(&cfg)
	}
	n, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	in := &instance{Node: n, table: tb, clk: clk, ref: ref, p: &picker{}}
	t.Cleanup(func() { in.close() })
	return in
}

// testLog writes a node's log to the test's, until the test and its
// cleanups are over: memberlist's goroutines can log after a node's Close
// returns, and testing panics at a Log after the test completed.
type testLog struct {
	t    *testing.T
	mu   *sync.Mutex
	done *bool
}

func newTestLog(t *testing.T) testLog {
	l := testLog{t: t, mu: new(sync.Mutex), done: new(bool)}
	t.Cleanup(func() { // registered first, so it runs after the nodes' Close
		l.mu.Lock()
		*l.done = true
		l.mu.Unlock()
	})
	return l
}

func (l testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !*l.done {
		l.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

var closed sync.Map

func (in *instance) close() {
	if _, done := closed.LoadOrStore(in, true); !done {
		in.Node.Close()
		in.table.Close()
	}
}

// servedBy is the server in's table holds for c (zero: none).
func (in *instance) servedBy(c netip.Addr) netip.AddrPort {
	ts := in.table.List(affinity.Filter{Client: c})
	if len(ts) != 1 {
		return netip.AddrPort{}
	}
	return ts[0].Server
}

// eventually polls cond until it holds or 10 s pass: broadcasts go out
// every gossip interval, not at once.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitReady(t *testing.T, ins ...*instance) {
	t.Helper()
	eventually(t, "ready", func() error {
		for _, in := range ins {
			if !in.Ready() {
				return fmt.Errorf("%s not ready", in.cfg.Name)
			}
		}
		return nil
	})
}

// A client bound on one instance is bound to the same server on every
// other, so that its connections reach that server whichever instance
// they land on.
func TestBindReachesEveryInstance(t *testing.T) {
	a := start(t, "a", nil)
	b := start(t, "b", nil, a)
	c := start(t, "c", nil, a)
	waitReady(t, a, b, c)
	want := map[netip.Addr]netip.AddrPort{}
	for i := range 100 {
		l, err := a.table.GetOrBind(a.ref, client(i), a.p)
		if err != nil {
			t.Fatal(err)
		}
		a.table.Release(l)
		want[client(i)] = l.Server()
	}
	for _, in := range []*instance{b, c} {
		eventually(t, "templates on "+in.cfg.Name, func() error {
			for cl, s := range want {
				if got := in.servedBy(cl); got != s {
					return fmt.Errorf("client %s: %v, want %s (a %+v, %s %+v)", cl, got, s, a.Stats(), in.cfg.Name, in.Stats())
				}
			}
			return nil
		})
		// And a connection there goes to it without the scheduler.
		l, err := in.table.GetOrBind(in.ref, client(7), in.p)
		if err != nil || !l.Hit || l.Server() != want[client(7)] || in.p.next.Load() != 0 {
			t.Fatalf("%s: lease %+v err %v, scheduler asked %d times", in.cfg.Name, l, err, in.p.next.Load())
		}
		in.table.Release(l)
	}
}

// A template whose client has connections open on one instance does not
// expire on the others, however long they last; after the last closes it
// expires a timeout later everywhere. An instance that leaves gives its
// holds back.
func TestOpenConnectionsHoldEverywhere(t *testing.T) {
	a := start(t, "a", nil)
	b := start(t, "b", nil, a)
	waitReady(t, a, b)
	cl := client(1)
	l, err := a.table.GetOrBind(a.ref, cl, a.p)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "held on b", func() error {
		if ts := b.table.List(affinity.Filter{Client: cl}); len(ts) != 1 || ts[0].Peers != 1 {
			return fmt.Errorf("b has %+v", ts)
		}
		return nil
	})
	b.clk.Advance(10 * time.Minute)
	if got := b.servedBy(cl); got != l.Server() {
		t.Fatalf("b after 10 min with a's connection open: %v, want %s", got, l.Server())
	}
	a.table.Release(l)
	eventually(t, "released on b", func() error {
		if ts := b.table.List(affinity.Filter{Client: cl}); len(ts) != 1 || ts[0].Peers != 0 {
			return fmt.Errorf("b has %+v", ts)
		}
		return nil
	})
	b.clk.Advance(59 * time.Second)
	if b.servedBy(cl) != l.Server() {
		t.Fatal("b dropped the template 59 s after a's last close")
	}
	b.clk.Advance(2 * time.Second)
	if got := b.servedBy(cl); got.IsValid() {
		t.Fatalf("b kept the template 61 s after a's last close: %s", got)
	}

	// a holds again (the lease is never released); a leaves; b gives the
	// hold back.
	if _, err := a.table.GetOrBind(a.ref, cl, a.p); err != nil {
		t.Fatal(err)
	}
	eventually(t, "held on b again", func() error {
		if ts := b.table.List(affinity.Filter{Client: cl}); len(ts) != 1 || ts[0].Peers != 1 {
			return fmt.Errorf("b has %+v", ts)
		}
		return nil
	})
	a.close()
	eventually(t, "released when a left", func() error {
		if h := b.Stats().Holds; h != 0 {
			return fmt.Errorf("%d holds", h)
		}
		return nil
	})
}

// A joining instance has every template before it says ready.
func TestJoinerReadyWithFullState(t *testing.T) {
	a := start(t, "a", nil)
	waitReady(t, a)
	const n = 3000
	for i := range n {
		l, _ := a.table.GetOrBind(a.ref, client(i), a.p)
		a.table.Release(l)
	}
	b := start(t, "b", nil, a)
	waitReady(t, b) // checked the moment it turns ready
	if got := b.table.Len(); got != n {
		t.Fatalf("b ready with %d templates, want %d", got, n)
	}
	if s := b.Stats(); s.Merges == 0 || s.StateTemplates != n {
		t.Errorf("stats %+v", s)
	}
	if ms := b.Members(); len(ms) != 2 || !ms[0].Self || ms[1].Name != "a" || ms[1].State != "alive" {
		t.Errorf("members %+v", ms)
	}
}

// Two instances that bound the same clients apart (a partition) agree on
// one server per client once they meet, the one with the higher Score.
func TestPartitionHealConverges(t *testing.T) {
	a := start(t, "a", nil)
	b := start(t, "b", nil)
	b.p.next.Store(1) // b picks the next server for the same client
	want := map[netip.Addr]netip.AddrPort{}
	for i := range 60 {
		cl := client(i)
		la, _ := a.table.GetOrBind(a.ref, cl, a.p)
		lb, _ := b.table.GetOrBind(b.ref, cl, b.p)
		a.table.Release(la)
		b.table.Release(lb)
		want[cl] = la.Server()
		if affinity.Score(cl, lb.Server()) > affinity.Score(cl, la.Server()) {
			want[cl] = lb.Server()
		}
	}
	if _, err := b.ml.Join([]string{a.Addr().String()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "converged", func() error {
		for cl, s := range want {
			if ga, gb := a.servedBy(cl), b.servedBy(cl); ga != s || gb != s {
				return fmt.Errorf("client %s: a %v, b %v, want %s", cl, ga, gb, s)
			}
		}
		return nil
	})
}

// An instance with another key cannot join, and the members are unchanged.
func TestWrongKeyRefused(t *testing.T) {
	key := []byte("0123456789abcdef")
	a := start(t, "a", key)
	waitReady(t, a)
	x := start(t, "x", []byte("fedcba9876543210"))
	if _, err := x.ml.Join([]string{a.Addr().String()}); err == nil {
		t.Fatal("an instance with another key joined")
	}
	if n := len(a.Members()); n != 1 {
		t.Fatalf("a has %d members after a wrong-key join", n)
	}
}

// Garbage, truncated and oversized messages are refused whole, counted,
// and change nothing.
func TestBadMessagesChangeNothing(t *testing.T) {
	a := start(t, "a", nil)
	waitReady(t, a)
	d := (*delegate)(a.Node)
	good := templatesMsg(42, record{svc: svc, client: client(1), server: servers[0], left: time.Minute})
	bad := map[string][]byte{
		"empty":      nil,
		"garbage":    []byte("GET / HTTP/1.1\r\n\r\n"),
		"truncated":  good[:len(good)-3],
		"trailing":   append(append([]byte{}, good...), 0),
		"version":    append([]byte{9}, good[1:]...),
		"kind":       append([]byte{wireVersion, 77}, good[2:]...),
		"port zero":  templatesMsg(42, record{svc: svc, client: client(1), server: netip.AddrPortFrom(servers[0].Addr(), 0)}),
		"count":      append(templatesMsg(42, record{svc: svc, client: client(1), server: servers[0]})[:headerLen], 0, 2),
		"second bad": append(templatesMsg(42, record{svc: svc, client: client(2), server: servers[0]}, record{svc: svc, client: client(3), server: servers[1]}), 7),
		"addr len 5": append(appendHeader(nil, kindInvalidate, 42), 2, 5, 1, 2, 3, 4, 5),
	}
	for name, msg := range bad {
		before := a.Stats().Dropped
		d.NotifyMsg(msg)
		if a.Stats().Dropped != before+1 {
			t.Errorf("%s: not refused", name)
		}
	}
	// States: one that announces a million templates, one truncated, one
	// whose second template names a server it does not list, one with a
	// byte after its end. Nothing of them applies.
	one := stateMsg(42, servers[:1], [2]int{0, 1})
	a.cfg.MaxStateTemplates = 1000
	for name, st := range map[string][]byte{
		"a million":   append(stateMsg(42, servers[:1])[:len(stateMsg(42, servers[:1]))-4], 0x00, 0x0f, 0x42, 0x40),
		"truncated":   one[:len(one)-2],
		"bad server":  stateMsg(42, servers[:1], [2]int{0, 1}, [2]int{1, 2}),
		"trailing":    append(append([]byte{}, one...), 0),
		"not a state": good,
	} {
		before := a.Stats().Dropped
		d.MergeRemoteState(st, false)
		if a.Stats().Dropped != before+1 {
			t.Errorf("state %s: not refused", name)
		}
	}
	if n := a.table.Len(); n != 0 {
		t.Fatalf("%d templates after refused messages", n)
	}
	d.MergeRemoteState(stateMsg(42, servers, [2]int{2, 5}), false)
	if a.servedBy(client(5)) != servers[2] {
		t.Fatal("a good state after the bad ones was not applied")
	}
	d.NotifyMsg(good)
	if a.servedBy(client(1)) != servers[0] {
		t.Fatal("a good message after the bad ones was not applied")
	}
}

// templatesMsg is sender's templates message of recs.
func templatesMsg(sender uint32, recs ...record) []byte {
	b := append(appendHeader(nil, kindTemplates, sender), byte(len(recs)>>8), byte(len(recs)))
	for _, r := range recs {
		b = appendRecord(b, r)
	}
	return b
}

// stateMsg is a complete state of sender for svc with servers srvs, and a
// template per {server index, client number}.
func stateMsg(sender uint32, srvs []netip.AddrPort, ts ...[2]int) []byte {
	b := append(appendHeader(nil, kindState, sender), 1, 0, 1)
	b = appendService(b, svc)
	b = append(b, byte(len(srvs)>>8), byte(len(srvs)))
	for _, s := range srvs {
		b = appendAddr(b, s.Addr())
		b = append(b, byte(s.Port()>>8), byte(s.Port()))
	}
	b = append(b, 0, 0, 0, byte(len(ts)))
	for _, t := range ts {
		b = append(b, 0, 0, byte(t[0]>>8), byte(t[0]))
		b = appendAddr(b, client(t[1]))
		b = append(b, 0, 0, 0, 0xea, 0x60) // idle, 60 s left
	}
	return b
}

// Every message the node sends decodes to what it said.
func TestWireRoundTrip(t *testing.T) {
	mark := affinity.MarkService(7)
	v6 := affinity.AddrService(affinity.ProtoUDP, netip.MustParseAddrPort("[2001:2::10]:53"))
	for _, rec := range []record{
		{svc: svc, client: client(1), server: servers[0], busy: true},
		{svc: mark, client: netip.MustParseAddr("2001:2::"), server: netip.MustParseAddrPort("[2001:2::1]:443"), left: 1500 * time.Millisecond},
		{svc: v6, client: client(2), server: servers[2], left: time.Hour},
	} {
		b := templatesMsg(5, rec)
		r := reader{b: b}
		kind, sender := r.header()
		n := r.u16("count")
		got := r.record()
		r.end()
		if r.err != nil || kind != kindTemplates || sender != 5 || n != 1 || got != rec {
			t.Errorf("%+v came back %+v (kind %d sender %d): %v", rec, got, kind, sender, r.err)
		}
	}
	s := svc
	at := time.UnixMilli(1764676800123)
	for _, inv := range []invalidation{{}, {svc: &s, at: at}, {client: client(3)}, {server: servers[1]}, {nonce: 9, at: at, svc: &s, client: client(3), server: servers[1]}} {
		r := reader{b: appendInvalidation(nil, inv)}
		got := r.invalidation()
		r.end()
		if r.err != nil || got.client != inv.client || got.server != inv.server || (got.svc == nil) != (inv.svc == nil) || !got.at.Equal(inv.at) && !inv.at.IsZero() || got.nonce != inv.nonce {
			t.Errorf("%+v came back %+v: %v", inv, got, r.err)
		}
	}
	if !errors.Is((&reader{b: []byte{1}}).take2(), errWire) {
		t.Error("a truncated message's error does not wrap errWire")
	}
}

func (r *reader) take2() error { r.u16("x"); return r.err }

// FuzzNotifyMsg: no message panics the node or applies half of itself.
func FuzzNotifyMsg(f *testing.F) {
	f.Add(templatesMsg(1, record{svc: svc, client: client(1), server: servers[0]}))
	f.Add(appendInvalidation(appendHeader(nil, kindInvalidate, 1), invalidation{client: client(1)}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := reader{b: b}
		kind, _ := r.header()
		switch kind {
		case kindTemplates:
			for range r.u16("count") {
				r.record()
			}
		case kindInvalidate:
			r.invalidation()
		}
		r.end()
	})
}

// An instance whose peers do not answer says ready after JoinTimeout, not
// before: it must serve even when it is the only one left.
func TestReadyAfterJoinTimeout(t *testing.T) {
	tb := affinity.New(affinity.Options{SweepInterval: -1})
	defer tb.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0") // hangs up on every join
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	n, err := Start(Config{Name: "alone", Bind: netip.MustParseAddrPort("127.0.0.1:0"), Join: []string{ln.Addr().String()},
		Table: tb, JoinTimeout: 300 * time.Millisecond, GossipInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.Ready() {
		t.Fatal("ready before any peer answered or the join timeout passed")
	}
	eventually(t, "ready after the join timeout", func() error {
		if !n.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
}

// A config that lists every instance, this one included, does not make an
// instance join itself (and say ready with nothing).
func TestJoinSkipsSelf(t *testing.T) {
	self := netip.MustParseAddrPort("127.0.0.1:7946")
	got := others([]string{"127.0.0.1:7946", "127.0.0.2:7946", "lb3:7946"}, self)
	if len(got) != 2 || got[0] != "127.0.0.2:7946" || got[1] != "lb3:7946" {
		t.Fatalf("others: %v", got)
	}
}

// FuzzState: no full state panics its decoding; one that decodes reads
// back its every record.
func FuzzState(f *testing.F) {
	f.Add(stateMsg(1, servers, [2]int{0, 1}, [2]int{2, 3}))
	n := &Node{cfg: Config{MaxStateTemplates: 1000}}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := n.decodeState(b)
		if err != nil {
			return
		}
		r := reader{b: b, off: st.body}
		for range st.count {
			st.record(&r)
		}
		if r.err != nil {
			t.Fatalf("a state that decoded fails on its second reading: %v", r.err)
		}
	})
}

// A peer's invalidation spares the templates used here after it was made:
// across a partition it arrives once this side has bound its clients
// again, and must not forget them.
func TestInvalidationSparesLaterUse(t *testing.T) {
	a := start(t, "a", nil)
	waitReady(t, a)
	t0 := a.clk.Now()
	old, later := client(1), client(2)
	a.table.Release(mustLease(t, a, old))
	a.clk.Advance(2 * time.Minute)
	a.table.Release(mustLease(t, a, later))
	msg := appendInvalidation(appendHeader(nil, kindInvalidate, 42), invalidation{nonce: 1, at: t0.Add(time.Minute)})
	(*delegate)(a.Node).NotifyMsg(msg)
	if a.servedBy(old).IsValid() {
		t.Error("the template last used before the invalidation survived it")
	}
	if !a.servedBy(later).IsValid() {
		t.Error("the template used after the invalidation was dropped")
	}
}

func mustLease(t *testing.T, in *instance, c netip.Addr) affinity.Lease {
	t.Helper()
	l, err := in.table.GetOrBind(in.ref, c, in.p)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// An operator's server change on one instance reaches the others' owners
// once each, relayed or not; a malformed one is refused.
func TestServerChangeReachesPeers(t *testing.T) {
	updates := make(chan ServerUpdate, 4)
	a := start(t, "a", nil)
	b := startWith(t, "b", nil, func(c *Config) { c.ServerUpdates = updates }, a)
	c := start(t, "c", nil, a)
	waitReady(t, a, b, c)
	eventually(t, "three members", func() error {
		if n := len(a.Members()); n != 3 {
			return fmt.Errorf("%d members", n)
		}
		return nil
	})
	w := 3
	a.ServerChanged("web", servers[1].String(), api.ServerChange{Weight: &w})
	select {
	case u := <-updates:
		if u.Service != "web" || u.Server != servers[1].String() || u.Change.Weight == nil || *u.Change.Weight != 3 || u.From != "a" {
			t.Fatalf("update %+v", u)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no update at b")
	}
	a.ServerChanged("web", servers[2].String(), api.ServerChange{Down: true})
	select {
	case u := <-updates:
		if !u.Change.Down || u.Server != servers[2].String() {
			t.Fatalf("update %+v", u)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no second update at b")
	}
	select { // c's relays of the same changes are not handed over again
	case u := <-updates:
		t.Fatalf("a change handed over twice: %+v", u)
	case <-time.After(300 * time.Millisecond):
	}
	before := b.Stats().Dropped
	bad := appendServerChange(appendHeader(nil, kindServer, 42), 1, "web", servers[0].String(), api.ServerChange{})
	(*delegate)(b.Node).NotifyMsg(bad) // operation 0
	if b.Stats().Dropped != before+1 || len(updates) != 0 {
		t.Fatal("a server change without an operation was not refused")
	}
}
