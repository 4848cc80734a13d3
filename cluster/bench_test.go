package cluster

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/tetherlb/tether/affinity"
)

// BenchmarkBind is a new client's connection (scheduler, bind, release)
// with the cluster off and on (one peer receiving): what sharing costs the
// data path. Compare the two ns/op of the same run.
func BenchmarkBind(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			a := benchInstance(b, "a", b.N+1)
			if on {
				peer := benchInstance(b, "p", b.N+1)
				benchNode(b, a, nil)
				benchNode(b, peer, a)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				l, err := a.table.GetOrBind(a.ref, benchClient(i), a.p)
				if err != nil {
					b.Fatal(err)
				}
				a.table.Release(l)
			}
		})
	}
}

// BenchmarkJoin is the time a joining instance takes to say ready, with
// 100 k and 1 M templates at its peer; bytes/template is the full state's
// size, and msg-bytes/template a template's share of a change message.
func BenchmarkJoin(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			a := benchInstance(b, "a", n)
			for i := range n {
				l, _ := a.table.GetOrBind(a.ref, benchClient(i), a.p)
				a.table.Release(l)
			}
			benchNode(b, a, nil)
			state := len((*delegate)(a.Node).LocalState(false))
			b.ResetTimer()
			for range b.N {
				j := benchInstance(b, "j", n)
				start := time.Now()
				benchNode(b, j, a)
				for !j.Ready() {
					time.Sleep(time.Millisecond)
				}
				b.ReportMetric(time.Since(start).Seconds(), "s/join")
				b.StopTimer()
				if got := j.table.Len(); got != n {
					b.Fatalf("joined with %d templates, want %d", got, n)
				}
				j.Node.Close()
				j.table.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(state)/float64(n), "bytes/template")
			recs := make([]record, 40)
			for i := range recs {
				recs[i] = record{svc: svc, client: benchClient(i), server: servers[0], left: time.Minute}
			}
			msg := templatesMsg(1, recs...)
			b.ReportMetric(float64(len(msg))/40, "msg-bytes/template")
		})
	}
}

func benchClient(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

// benchInstance is an instance without its node yet, sized for n clients.
func benchInstance(b *testing.B, name string, n int) *instance {
	tb := affinity.New(affinity.Options{Capacity: 2 * n, SweepInterval: -1})
	ref := tb.SetService(svc, affinity.ServiceConfig{Timeout: time.Hour})
	for _, s := range servers {
		tb.SetServer(ref, s, affinity.ServerUp)
	}
	in := &instance{table: tb, ref: ref, p: &picker{}, clk: &clock{}}
	in.Node = &Node{cfg: Config{Name: name}}
	b.Cleanup(func() { tb.Close() })
	return in
}

// benchNode starts in's node, joining join (nil: none).
func benchNode(b *testing.B, in *instance, join *instance) {
	var addrs []string
	if join != nil {
		addrs = []string{join.Addr().String()}
	}
	n, err := Start(Config{Name: in.cfg.Name, Bind: netip.MustParseAddrPort("127.0.0.1:0"), Join: addrs, Table: in.table,
		MaxStateTemplates: 4 << 20, MaxHolds: 4 << 20})
	if err != nil {
		b.Fatal(err)
	}
	in.Node = n
	b.Cleanup(func() { n.Close() })
}
