package director

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tetherlb/tether/affinity"
)

// fakeKernel records what a Mirror writes.
type fakeKernel struct {
	mu       sync.Mutex
	changes  []affinity.Change
	rebuilds int
	batches  int
	fail     int // writes to refuse
}

func (k *fakeKernel) apply(cs []affinity.Change) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fail > 0 {
		k.fail--
		return errors.New("refused")
	}
	k.changes = append(k.changes, cs...)
	k.batches++
	return nil
}

func (k *fakeKernel) rebuild() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.rebuilds++
	k.changes = nil
	return nil
}

func (k *fakeKernel) state() (int, []affinity.Change) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.rebuilds, append([]affinity.Change(nil), k.changes...)
}

type onePick netip.AddrPort

func (p onePick) Pick(netip.Addr) (netip.AddrPort, error) { return netip.AddrPort(p), nil }

func mirrorFixture(t *testing.T, perShard int) (*affinity.Table, affinity.ServiceRef, *fakeKernel, *Mirror) {
	return pacedFixture(t, perShard, 0)
}

func pacedFixture(t *testing.T, perShard int, pace time.Duration) (*affinity.Table, affinity.ServiceRef, *fakeKernel, *Mirror) {
	t.Helper()
	tb := affinity.New(affinity.Options{Capacity: 1024, SweepInterval: -1})
	t.Cleanup(func() { tb.Close() })
	ref := tb.SetService(affinity.MarkService(1), affinity.ServiceConfig{Journal: true})
	tb.SetServer(ref, netip.MustParseAddrPort("198.19.0.11:80"), affinity.ServerUp)
	k := &fakeKernel{}
	m, err := StartMirror(MirrorOptions{Table: tb, Limit: perShard, Apply: k.apply, Rebuild: k.rebuild, Pace: pace})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	m.Sync()
	return tb, ref, k, m
}

// Sync returns once the changes made before it are written, in order.
func TestMirrorWritesInOrder(t *testing.T) {
	tb, ref, k, m := mirrorFixture(t, 64)
	c := netip.MustParseAddr("198.18.1.10")
	l, err := tb.GetOrBind(ref, c, onePick(netip.MustParseAddrPort("198.19.0.11:80")))
	if err != nil {
		t.Fatal(err)
	}
	tb.Release(l)
	tb.Invalidate(affinity.Filter{Client: c})
	m.Sync()
	rebuilds, got := k.state()
	var kinds []affinity.ChangeKind
	for _, ch := range got {
		kinds = append(kinds, ch.Kind)
	}
	if rebuilds != 0 || len(kinds) != 3 || kinds[0] != affinity.Busy || kinds[1] != affinity.Idle || kinds[2] != affinity.Dropped {
		t.Errorf("rebuilds %d, changes %v; want none and Busy, Idle, Dropped", rebuilds, kinds)
	}
}

// A journal that overflows between two writes makes the mirror rebuild the
// maps from the table.
func TestMirrorRebuildsAfterOverflow(t *testing.T) {
	tb, ref, k, m := mirrorFixture(t, 1) // one change a shard between drains
	pick := onePick(netip.MustParseAddrPort("198.19.0.11:80"))
	// Changes made while the mirror is held in a write overflow the ring.
	k.mu.Lock()
	go func() {
		for i := range 64 {
			l, _ := tb.GetOrBind(ref, netip.AddrFrom4([4]byte{198, 18, 2, byte(i)}), pick)
			tb.Release(l)
		}
		k.mu.Unlock()
	}()
	deadline := time.Now().Add(5 * time.Second)
	for r, _ := k.state(); r < 1 && time.Now().Before(deadline); r, _ = k.state() {
		m.Sync()
	}
	if r, _ := k.state(); r < 1 {
		t.Fatalf("%d rebuilds after an overflow, want one", r)
	}
	if s := m.Stats(); s.Rebuilds < 1 {
		t.Errorf("stats %+v: want the rebuilds counted", s)
	}
}

// A write the kernel refuses makes the mirror rebuild the maps from the
// table (after a pause).
func TestMirrorRebuildsAfterRefusedWrite(t *testing.T) {
	tb, ref, k, _ := mirrorFixture(t, 64)
	pick := onePick(netip.MustParseAddrPort("198.19.0.11:80"))
	deadline := time.Now().Add(5 * time.Second)
	before, _ := k.state()
	k.mu.Lock()
	k.fail = 1
	k.mu.Unlock()
	l, _ := tb.GetOrBind(ref, netip.MustParseAddr("198.18.3.1"), pick)
	tb.Release(l)
	for r, _ := k.state(); r == before && time.Now().Before(deadline); r, _ = k.state() {
		time.Sleep(10 * time.Millisecond)
	}
	k.mu.Lock()
	refused := k.fail == 0
	k.mu.Unlock()
	if r, _ := k.state(); r == before || !refused {
		t.Errorf("rebuilds %d -> %d, the refusal used: %v; want a rebuild after the refused write", before, r, refused)
	}
}

// Paced, the journal's changes are written at most once a Pace, the ones
// made meanwhile joining the batch, and none is lost; a Sync writes at
// once. Unpaced, 200 binds a millisecond apart made about 200 writes.
func TestMirrorPace(t *testing.T) {
	const pace = 50 * time.Millisecond
	tb, ref, k, m := pacedFixture(t, 1024, pace)
	srv := onePick(netip.MustParseAddrPort("198.19.0.11:80"))
	_, before := k.state()
	start := time.Now()
	for i := range 200 {
		l, err := tb.GetOrBind(ref, netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(i%250 + 1)}), srv)
		if err != nil {
			t.Fatal(err)
		}
		tb.Release(l)
		time.Sleep(time.Millisecond)
	}
	m.Sync()
	elapsed := time.Since(start)
	k.mu.Lock()
	batches, changes := k.batches, len(k.changes)-len(before)
	k.mu.Unlock()
	if most := int(elapsed/pace) + 2; batches > most {
		t.Errorf("%d writes in %v, want at most %d at a pace of %v", batches, elapsed, most, pace)
	}
	if changes != 400 {
		t.Errorf("%d changes written, want 400 (a Busy and an Idle for each of 200 clients)", changes)
	}

	// A Sync does not wait for the pace: with an hour's pace it returns.
	tb2, ref2, k2, m2 := pacedFixture(t, 64, time.Hour)
	l, err := tb2.GetOrBind(ref2, netip.MustParseAddr("198.18.9.9"), srv)
	if err != nil {
		t.Fatal(err)
	}
	tb2.Release(l)
	m2.Sync()
	if _, got := k2.state(); len(got) != 2 {
		t.Errorf("after a Sync the kernel has %d changes, want 2", len(got))
	}
}
