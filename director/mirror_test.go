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
	t.Helper()
	tb := affinity.New(affinity.Options{Capacity: 1024, SweepInterval: -1})
	t.Cleanup(func() { tb.Close() })
	ref := tb.SetService(affinity.MarkService(1), affinity.ServiceConfig{Journal: true})
	tb.SetServer(ref, netip.MustParseAddrPort("198.19.0.11:80"), affinity.ServerUp)
	k := &fakeKernel{}
	m := StartMirror(MirrorOptions{Table: tb, PerShard: perShard, Apply: k.apply, Rebuild: k.rebuild})
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
