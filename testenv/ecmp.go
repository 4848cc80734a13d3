package testenv

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// The ECMP site (Spec.Balancers): the lb host becomes a router, with the
// clients' network and the backends' as before, and a third network to
// the balancers:
//
//	clients -- br-c [router] br-l -- balancer0..N-1 (VIP on lo) -- br-s [router] -- backends
//
// The router reaches the VIP by a multipath route through every
// balancer, hashing each connection's addresses and ports
// (fib_multipath_hash_policy 1), so that one client's connections land on
// different balancers, as behind a real ECMP router. Each balancer has an
// address on the backends' network too, and goes back to clients through
// the router. IPv4 only.

// TransitAddr is the router's address on the balancers' network and
// BalancerAddr balancer i's; BalancerServerSide is balancer i's address
// on the backends' network.
var TransitAddr = netip.MustParseAddr("198.19.1.1")

func BalancerAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 1, byte(11 + i)}) }

func BalancerServerSide(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 19, 0, byte(101 + i)})
}

func (e *Env) ecmp(router *netlink.Handle, brS netlink.Link, n int) error {
	brL, err := addBridge(router, "br-l", prefixOf(TransitAddr, 24))
	if err != nil {
		return err
	}
	for i := range n {
		h, err := e.newHost(fmt.Sprintf("balancer%d", i))
		if err != nil {
			return err
		}
		h.Addrs = []netip.Addr{BalancerAddr(i), BalancerServerSide(i)}
		if err := e.wire(router, brL, fmt.Sprintf("l%d", i), "eth0", h, []netip.Prefix{prefixOf(BalancerAddr(i), 24)}, TransitAddr); err != nil {
			return err
		}
		if err := e.wire(router, brS, fmt.Sprintf("b%d", i), "eth1", h, []netip.Prefix{prefixOf(BalancerServerSide(i), 24)}); err != nil {
			return err
		}
		nh, err := netlink.NewHandleAt(h.ns)
		if err != nil {
			return err
		}
		lo, err := nh.LinkByName("lo")
		if err == nil {
			err = nh.AddrAdd(lo, nlAddr(prefixOf(VIP, 32)))
		}
		nh.Close()
		if err != nil {
			return fmt.Errorf("testenv: VIP on %s: %w", h.Name, err)
		}
		if err := h.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
			return err
		}
		e.Balancers = append(e.Balancers, h)
	}
	if err := routeVIP(router, brL, n); err != nil {
		return err
	}
	vip := &net.IPNet{IP: VIP.AsSlice(), Mask: net.CIDRMask(32, 32)}
	// The VIP is inside the clients' /16, where they would look for it on
	// their own network: it is behind the router.
	for _, c := range e.Clients {
		nh, err := netlink.NewHandleAt(c.ns)
		if err != nil {
			return err
		}
		err = nh.RouteAdd(&netlink.Route{Dst: vip, Gw: LBClientSide.AsSlice()})
		nh.Close()
		if err != nil {
			return fmt.Errorf("testenv: route to %s in %s: %w", VIP, c.Name, err)
		}
	}
	return e.LB.Sysctl("net.ipv4.fib_multipath_hash_policy", "1")
}

// RouteToBalancers points the router's multipath route to the VIP at the
// first n balancers, as a routing protocol withdraws a dead one (0 < n <=
// len(Balancers)).
func (e *Env) RouteToBalancers(n int) error {
	if n <= 0 || n > len(e.Balancers) {
		return fmt.Errorf("testenv: route to %d of %d balancers", n, len(e.Balancers))
	}
	router, err := netlink.NewHandleAt(e.LB.ns)
	if err != nil {
		return err
	}
	defer router.Close()
	brL, err := router.LinkByName("br-l")
	if err != nil {
		return fmt.Errorf("testenv: no ECMP site: %w", err)
	}
	return routeVIP(router, brL, n)
}

// routeVIP routes the VIP through the first n balancers, by hash.
func routeVIP(router *netlink.Handle, brL netlink.Link, n int) error {
	var hops []*netlink.NexthopInfo
	for i := range n {
		hops = append(hops, &netlink.NexthopInfo{LinkIndex: brL.Attrs().Index, Gw: BalancerAddr(i).AsSlice()})
	}
	vip := &net.IPNet{IP: VIP.AsSlice(), Mask: net.CIDRMask(32, 32)}
	if err := router.RouteReplace(&netlink.Route{Dst: vip, MultiPath: hops}); err != nil {
		return fmt.Errorf("testenv: multipath route to %s: %w", VIP, err)
	}
	return nil
}
