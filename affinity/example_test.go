package affinity_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/tetherlb/tether/affinity"
)

// first is a scheduler that always picks its first server.
type first []netip.AddrPort

func (f first) Pick(netip.Addr) (netip.AddrPort, error) { return f[0], nil }

func Example() {
	t := affinity.New(affinity.Options{})
	defer t.Close()

	// A persistent service: /24 client groups, 5 minutes.
	mask, _ := affinity.ParseMask("255.255.255.0", "")
	svc := affinity.AddrService(affinity.ProtoTCP, netip.MustParseAddrPort("198.18.0.10:443"))
	ref := t.SetService(svc, affinity.ServiceConfig{Timeout: 5 * time.Minute, Mask: mask})
	a := netip.MustParseAddrPort("198.18.1.1:443")
	b := netip.MustParseAddrPort("198.18.1.2:443")
	t.SetServer(ref, a, affinity.ServerUp)
	t.SetServer(ref, b, affinity.ServerUp)

	l1, _ := t.GetOrBind(ref, netip.MustParseAddr("192.0.2.10"), first{a})
	t.Release(l1)
	// Another client of the same /24: the template wins over the scheduler.
	l2, _ := t.GetOrBind(ref, netip.MustParseAddr("192.0.2.99"), first{b})
	fmt.Println(l1.Server(), l1.Hit)
	fmt.Println(l2.Server(), l2.Hit)
	for _, tp := range t.List(affinity.Filter{}) {
		fmt.Println(tp.Service, tp.Client, "->", tp.Server, "active", tp.Active)
	}
	// Output:
	// 198.18.1.1:443 false
	// 198.18.1.1:443 true
	// tcp 198.18.0.10:443 192.0.2.0/24 -> 198.18.1.1:443 active 1
}
