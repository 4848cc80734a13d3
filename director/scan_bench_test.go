package director

import (
	"net/netip"
	"testing"

	"github.com/tetherlb/tether/testenv"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// BenchmarkScan: one conntrack scan's dump and decode over a table of
// 100 000 entries of tether's (a choice mark each, half open and half in
// TIME_WAIT, as a busy director's table holds) and as many of others'
// (mark 0, which the kernel's mark filter skips), in a network namespace
// of its own. It reports the entries a second a scan reads, the figure
// the scans' interval (50 times a scan's duration) follows from.
func BenchmarkScan(b *testing.B) {
	env := testenv.Start(b, testenv.Spec{Clients: 1, Backends: 1, Label: "bscan"})
	const n = 100_000
	err := env.LB.Do(func() error {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		dst := netip.MustParseAddr("198.18.0.10")
		for i := range 2 * n {
			src := netip.AddrFrom4([4]byte{198, 19, byte(i >> 16), byte(i >> 8)})
			mark := uint32(0x7e000000 + i%4)
			if i >= n {
				mark = 0
			}
			f := conntrack.NewFlow(unix.IPPROTO_TCP, conntrack.StatusConfirmed|conntrack.StatusAssured, src, dst, uint16(1024+i%60000), 80, 300, mark)
			state := uint8(3) // ESTABLISHED
			if i%2 == 1 {
				state = tcpTimeWait
			}
			f.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: state}
			if err := c.Create(f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Skip("cannot fill conntrack:", err)
	}
	c, err := dialCTDump(env.LB.Do)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	b.ResetTimer()
	var seen, closed int
	for range b.N {
		seen, closed = 0, 0
		err := c.dump(0x7e000000, 0xfffffffc, func(e ctEntry) {
			seen++
			if e.closed() {
				closed++
			}
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if seen != n || closed != n/2 {
		b.Fatalf("a scan read %d entries (%d closed), want %d (%d)", seen, closed, n, n/2)
	}
	b.ReportMetric(float64(seen)*float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}
