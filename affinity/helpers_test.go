package affinity

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is the injected clock: tests move time, nothing sleeps.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// rrPicker is a round-robin scheduler over its servers that skips the ones
// marked down, and counts how often the table asked it.
type rrPicker struct {
	servers []netip.AddrPort
	down    sync.Map // netip.AddrPort -> bool
	next    atomic.Uint64
	calls   atomic.Int64
}

func newPicker(n int) *rrPicker {
	p := &rrPicker{}
	for i := range n {
		p.servers = append(p.servers, netip.MustParseAddrPort(fmt.Sprintf("198.18.1.%d:80", i+1)))
	}
	return p
}

func (p *rrPicker) Pick(netip.Addr) (netip.AddrPort, error) {
	p.calls.Add(1)
	for range p.servers {
		s := p.servers[p.next.Add(1)%uint64(len(p.servers))]
		if _, down := p.down.Load(s); !down {
			return s, nil
		}
	}
	return netip.AddrPort{}, errors.New("no server is up")
}

var svcWeb = AddrService(ProtoTCP, netip.MustParseAddrPort("198.18.0.10:80"))

// newTestTable makes a table on a fake clock with one service whose servers
// are p's, and no background sweeper.
func newTestTable(o Options, c ServiceConfig, p *rrPicker) (*Table, ServiceRef, *fakeClock) {
	clk := newFakeClock()
	o.Now = clk.Now
	if o.SweepInterval == 0 {
		o.SweepInterval = -1
	}
	t := New(o)
	ref := t.SetService(svcWeb, c)
	for _, s := range p.servers {
		if err := t.SetServer(ref, s, ServerUp); err != nil {
			panic(err)
		}
	}
	return t, ref, clk
}

func client(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, byte(i >> 16), byte(i >> 8), byte(i)})
}

// follow starts a follower of tb with room for perShard changes a shard,
// closed when the test ends.
func follow(t *testing.T, tb *Table, perShard int, all bool) *Follower {
	t.Helper()
	f, err := tb.Follow(perShard*len(tb.shards), all)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}
