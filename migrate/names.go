package migrate

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Resolver turns the names `ipvsadm -S` prints without -n (its default)
// into addresses and ports: host names (lb.example.com) and service names
// (http, https, as /etc/services has them).
type Resolver struct {
	// Host resolves a host name to its addresses.
	Host func(ctx context.Context, host string) ([]netip.Addr, error)
	// Port resolves a service name for network ("tcp" or "udp").
	Port func(ctx context.Context, network, service string) (int, error)
}

// SystemResolver resolves as the host does: /etc/hosts and DNS, and
// /etc/services with Go's own table of the common names where the file is
// missing.
func SystemResolver() Resolver {
	return Resolver{
		Host: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		},
		Port: net.DefaultResolver.LookupPort,
	}
}

// lookupTimeout bounds one name's resolution.
const lookupTimeout = 5 * time.Second

// addrPort reads host:port as ipvsadm writes it, numeric or named
// ([v6]:port for IPv6); with portOptional a host alone is port 0. It
// returns what the names became, for a note, empty when all was numeric.
func (r *Result) addrPort(s, network string, portOptional bool) (netip.AddrPort, string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), "", nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if !portOptional {
			return netip.AddrPort{}, "", fmt.Errorf("%q is not a host:port", s)
		}
		host, port = strings.Trim(s, "[]"), "0"
	}
	var said []string
	addr, err := netip.ParseAddr(host)
	if err != nil {
		if r.res.Host == nil {
			return netip.AddrPort{}, "", fmt.Errorf("host %q: names are not resolved here", host)
		}
		ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
		addrs, err := r.res.Host(ctx, host)
		cancel()
		if err != nil || len(addrs) == 0 {
			return netip.AddrPort{}, "", fmt.Errorf("host %q does not resolve: %v", host, err)
		}
		// An IPv4 address when there is one: ipvsadm's service was one
		// family, and a name with both usually means the IPv4 one.
		i := max(slices.IndexFunc(addrs, func(a netip.Addr) bool { return a.Unmap().Is4() }), 0)
		addr = addrs[i]
		note := fmt.Sprintf("host %s is %s", host, addr.Unmap())
		if len(addrs) > 1 {
			note += fmt.Sprintf(" (of its %d addresses)", len(addrs))
		}
		said = append(said, note)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		if r.res.Port == nil {
			return netip.AddrPort{}, "", fmt.Errorf("port %q: names are not resolved here", port)
		}
		ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
		p, perr := r.res.Port(ctx, network, port)
		cancel()
		if perr != nil || p <= 0 || p > 65535 {
			return netip.AddrPort{}, "", fmt.Errorf("port %q is not a number or a %s service name (/etc/services)", port, network)
		}
		n = uint64(p)
		said = append(said, fmt.Sprintf("port %s is %d", port, p))
	}
	note := strings.Join(said, ", ")
	if r.resolved[s] {
		note = "" // said at its first line
	} else if note != "" {
		if r.resolved == nil {
			r.resolved = map[string]bool{}
		}
		r.resolved[s] = true
	}
	return netip.AddrPortFrom(addr.Unmap(), uint16(n)), note, nil
}
