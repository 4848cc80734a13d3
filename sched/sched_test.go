package sched

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var allSchedulers = Names

// server is a real server as the schedulers see it.
type server struct {
	Addr     netip.AddrPort
	weight   int
	maxConns int
	conns    atomic.Int64
	down     atomic.Bool
}

func (s *server) Weight() int             { return s.weight }
func (s *server) Conns() int              { return int(s.conns.Load()) }
func (s *server) Address() netip.AddrPort { return s.Addr }
func (s *server) Available() bool {
	return s.weight > 0 && !s.down.Load() && (s.maxConns == 0 || s.Conns() < s.maxConns)
}

func newServer(addr netip.AddrPort, weight, maxConns int) *server {
	return &server{Addr: addr, weight: weight, maxConns: maxConns}
}

func servers(weights ...int) []*server {
	var out []*server
	for i, w := range weights {
		out = append(out, newServer(netip.MustParseAddrPort(fmt.Sprintf("198.18.1.%d:80", i+1)), w, 0))
	}
	return out
}

func clientN(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

// counts picks n times, opening a connection on each pick when hold is set
// (so the connection-counting schedulers see their own choices).
func counts(t *testing.T, s Scheduler[*server], srv []*server, n int, hold bool) []int {
	t.Helper()
	got := make([]int, len(srv))
	for i := range n {
		p := s.Pick(clientN(i), nil)
		if p == nil {
			t.Fatalf("pick %d: no server", i)
		}
		for j := range srv {
			if srv[j] == p {
				got[j]++
			}
		}
		if hold {
			p.conns.Add(1)
		}
	}
	return got
}

func TestSchedulerDistribution(t *testing.T) {
	for _, tc := range []struct {
		name    Name
		weights []int
		hold    bool
		want    []int
	}{
		{RoundRobin, []int{1, 5, 1}, false, []int{100, 100, 100}},
		{WeightedRoundRobin, []int{4, 3, 2}, false, []int{400, 300, 200}},
		{LeastConnection, []int{1, 5, 1}, true, []int{100, 100, 100}},
		{WeightedLeastConnection, []int{1, 2, 3}, true, []int{50, 100, 150}},
		{ShortestExpectedDelay, []int{1, 2, 3}, true, []int{50, 100, 150}},
		{NeverQueue, []int{1, 2, 3}, true, []int{50, 100, 150}},
	} {
		t.Run(string(tc.name), func(t *testing.T) {
			srv := servers(tc.weights...)
			s, err := New(tc.name, srv)
			if err != nil {
				t.Fatal(err)
			}
			total := 0
			for _, w := range tc.want {
				total += w
			}
			got := counts(t, s, srv, total, tc.hold)
			for i := range got {
				if math.Abs(float64(got[i]-tc.want[i])) > 1 {
					t.Fatalf("spread %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestWRRSequenceIsIPVSs(t *testing.T) {
	srv := servers(4, 3, 2)
	s := newWRR(srv)
	var seq []string
	for range 9 {
		seq = append(seq, string(rune('a'+int(s.Pick(netip.Addr{}, nil).Addr.Addr().As4()[3])-1)))
	}
	if got := strings.Join(seq, " "); got != "a a b a b c a b c" {
		t.Errorf("sequence %q, want IPVS's \"a a b a b c a b c\"", got)
	}
}

func TestNQPrefersIdle(t *testing.T) {
	srv := servers(5, 1, 1)
	srv[0].conns.Store(1)
	srv[1].conns.Store(1)
	if got := nq[*server](srv).Pick(clientN(1), nil); got != srv[2] {
		t.Errorf("nq picked %s, want the idle %s despite its weight", got.Addr, srv[2].Addr)
	}
	// sed picks by (conns+1)/weight instead: 2/5 < 1/1.
	if got := sed[*server](srv).Pick(clientN(1), nil); got != srv[0] {
		t.Errorf("sed picked %s, want %s", got.Addr, srv[0].Addr)
	}
}

func TestHashSchedulersAreStableAndWeighted(t *testing.T) {
	for _, name := range []Name{SourceHashing, MaglevHashing} {
		t.Run(string(name), func(t *testing.T) {
			srv := servers(1, 1, 2)
			a, _ := New(name, srv)
			// Another instance, built from equal servers, agrees.
			b, _ := New(name, servers(1, 1, 2))
			got := make([]int, 3)
			const n = 40000
			for i := range n {
				p := a.Pick(clientN(i), nil)
				q := b.Pick(clientN(i), nil)
				if p.Addr != q.Addr {
					t.Fatalf("client %s: instance a says %s, b says %s", clientN(i), p.Addr, q.Addr)
				}
				if again := a.Pick(clientN(i), nil); again != p {
					t.Fatalf("client %s moved from %s to %s", clientN(i), p.Addr, again.Addr)
				}
				got[int(p.Addr.Addr().As4()[3])-1]++
			}
			for i, w := range []float64{0.25, 0.25, 0.5} {
				if f := float64(got[i]) / n; math.Abs(f-w) > 0.05 {
					t.Errorf("server %d got %.3f of clients, want %.2f (spread %v)", i+1, f, w, got)
				}
			}
		})
	}
}

// Adding an eleventh server moves about 1/11 of the clients, nearly all to
// the new server (Maglev's disruption is near-minimal, not minimal).
func TestMaglevDisruption(t *testing.T) {
	ws := make([]int, 10)
	for i := range ws {
		ws[i] = 1
	}
	before := newMH(servers(ws...))
	after := newMH(servers(append(ws, 1)...))
	const n = 100000
	moved, toNew := 0, 0
	for i := range n {
		p, q := before.Pick(clientN(i), nil), after.Pick(clientN(i), nil)
		if p.Addr != q.Addr {
			moved++
			if q.Addr.Addr().As4()[3] == 11 {
				toNew++
			}
		}
	}
	frac := float64(moved) / n
	t.Logf("adding server 11 of 11 moved %.4f of clients (ideal %.4f), %.3f of them to the new one", frac, 1.0/11, float64(toNew)/float64(moved))
	if float64(toNew) < 0.95*float64(moved) {
		t.Errorf("only %d of %d moved clients went to the new server", toNew, moved)
	}
	if frac > 1.0/10 {
		t.Errorf("moved %.4f of clients, want at most 1/N = %.4f", frac, 1.0/10)
	}
}

func TestSchedulersHonourWeightZeroSkipAndAvailability(t *testing.T) {
	for _, name := range allSchedulers {
		t.Run(string(name), func(t *testing.T) {
			srv := servers(1, 0, 1)
			s, err := New(name, srv)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 200 {
				if p := s.Pick(clientN(i), nil); p == srv[1] {
					t.Fatal("picked a weight-0 (quiescent) server")
				}
			}
			for i := range 50 {
				if p := s.Pick(clientN(i), []*server{srv[0]}); p != srv[2] {
					t.Fatalf("with server 1 skipped, picked %v", p)
				}
			}
			srv[2].down.Store(true)
			for i := range 50 {
				if p := s.Pick(clientN(i), nil); p != srv[0] {
					t.Fatalf("with server 3 down, picked %v", p)
				}
			}
			if p := s.Pick(clientN(1), []*server{srv[0]}); p != nil {
				t.Fatalf("nothing available, picked %s", p.Addr)
			}
		})
	}
}

func TestSchedulerPerServerLimit(t *testing.T) {
	srv := []*server{newServer(netip.MustParseAddrPort("198.18.1.1:80"), 1, 2), newServer(netip.MustParseAddrPort("198.18.1.2:80"), 1, 0)}
	s := newRR(srv)
	srv[0].conns.Store(2)
	for i := range 10 {
		if p := s.Pick(clientN(i), nil); p != srv[1] {
			t.Fatalf("picked a server at its connection limit")
		}
	}
}

func TestUnknownScheduler(t *testing.T) {
	_, err := New("fastest", servers(1))
	if diff := cmp.Diff(`unknown scheduler "fastest"`, fmt.Sprint(err)); diff != "" {
		t.Error(diff)
	}
}
