package testenv

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// RoutedPrefix holds the routed sources of RoutedSources: 32766
// addresses, outside the client network's /16 and the server network's
// /24.
var RoutedPrefix = netip.MustParsePrefix("198.19.128.0/17")

// RoutedSources gives client host h n more IPv4 source addresses, from
// RoutedPrefix, and the load balancer a route to all of them through h's
// primary address: thousands of new clients then cost the balancer one
// neighbour entry, where as many addresses on the client network would
// need one each, and the kernel's neighbour table holds 1024 entries for
// all namespaces together (gc_thresh3, a root-namespace setting a test
// must not change). One host holds the prefix. The addresses are not in
// h.Addrs (each of those has an IPv6 twin); dial from the ones returned.
func (e *Env) RoutedSources(h *Host, n int) ([]netip.Addr, error) {
	if max := 1<<(32-RoutedPrefix.Bits()) - 2; n < 1 || n > max {
		return nil, fmt.Errorf("testenv: %d routed sources: want 1 to %d", n, max)
	}
	if e.Balancers != nil {
		return nil, errors.New("testenv: routed sources need the single load balancer, not an ECMP site")
	}
	e.mu.Lock()
	taken := e.routedTo != nil
	if !taken {
		e.routedTo = h
	}
	e.mu.Unlock()
	if taken {
		return nil, errors.New("testenv: routed sources are given once")
	}
	nh, err := netlink.NewHandleAt(h.ns)
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	eth, err := nh.LinkByName("eth0")
	if err != nil {
		return nil, fmt.Errorf("testenv: eth0 in %s: %w", h.Name, err)
	}
	addrs := make([]netip.Addr, n)
	a := RoutedPrefix.Addr()
	for i := range addrs {
		a = a.Next()
		addrs[i] = a
		if err := nh.AddrAdd(eth, nlAddr(prefixOf(a, 32))); err != nil {
			return nil, fmt.Errorf("testenv: address %s in %s: %w", a, h.Name, err)
		}
	}
	lb, err := netlink.NewHandleAt(e.LB.ns)
	if err != nil {
		return nil, err
	}
	defer lb.Close()
	dst := nlAddr(RoutedPrefix).IPNet
	if err := lb.RouteAdd(&netlink.Route{Dst: dst, Gw: h.Addrs[0].AsSlice()}); err != nil {
		return nil, fmt.Errorf("testenv: route to %s via %s in lb: %w", RoutedPrefix, h.Name, err)
	}
	return addrs, nil
}
