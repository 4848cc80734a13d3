package hostnet

import (
	"net"
	"net/netip"
)

// LocalAddrs are the addresses of the calling thread's namespace's
// interfaces, up or down: those a socket can bind without IP_FREEBIND.
func LocalAddrs() (map[netip.Addr]bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]bool{}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out[ip.Unmap()] = true
			}
		}
	}
	return out, nil
}
