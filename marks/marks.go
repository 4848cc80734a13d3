package marks

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Protocols is the set of transport protocols a class covers.
type Protocols uint8

// The protocols.
const (
	TCP Protocols = 1 << iota
	UDP
	Both = TCP | UDP
)

// ParseProtocols reads "tcp", "udp" or "both"; "" is tcp.
func ParseProtocols(s string) (Protocols, error) {
	switch s {
	case "", "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "both":
		return Both, nil
	}
	return 0, fmt.Errorf("protocol %q is not tcp, udp or both", s)
}

func (p Protocols) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case Both:
		return "both"
	}
	return "none"
}

// PortRange is an inclusive range of destination ports; a single port has
// From == To.
type PortRange struct{ From, To uint16 }

func (r PortRange) String() string {
	if r.From == r.To {
		return strconv.Itoa(int(r.From))
	}
	return fmt.Sprintf("%d-%d", r.From, r.To)
}

func (r PortRange) overlaps(o PortRange) bool { return r.From <= o.To && o.From <= r.To }

// ParsePorts reads port specs: "80", "30000-30099", or "all".
func ParsePorts(specs []string) ([]PortRange, error) {
	var out []PortRange
	for _, s := range specs {
		s = strings.TrimSpace(s)
		if s == "all" {
			out = append(out, PortRange{1, 65535}) // every port: a port-0 service
			continue
		}
		lo, hi, isRange := strings.Cut(s, "-")
		from, err1 := parsePort(lo)
		to, err2 := from, error(nil)
		if isRange {
			to, err2 = parsePort(hi)
		}
		switch {
		case err1 != nil || err2 != nil:
			return nil, fmt.Errorf("port %q: want a port 1..65535, a range such as 30000-30099, or all", s)
		case to < from:
			return nil, fmt.Errorf("port range %q is reversed", s)
		}
		out = append(out, PortRange{from, to})
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > 65535 {
		return 0, strconv.ErrRange
	}
	return uint16(n), nil
}

// Class is one firewall-mark class.
type Class struct {
	Name      string
	Mark      uint32
	Protocols Protocols
	// Addrs are the destination addresses and prefixes (IPv4 and IPv6).
	Addrs []netip.Prefix
	// Ports are the destination ports.
	Ports []PortRange
}

// ParseAddrs reads destination addresses: "198.18.0.10" (a /32 or /128)
// or a prefix "198.18.0.0/24".
func ParseAddrs(specs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range specs {
		if p, err := netip.ParsePrefix(s); err == nil {
			if p.Masked() != p {
				return nil, fmt.Errorf("prefix %q has host bits set (did you mean %s?)", s, p.Masked())
			}
			out = append(out, p)
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an address or prefix", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// Set is the classes of one configuration, and the bits of the packet mark
// tether owns: the rest of the mark stays with other users of the host.
type Set struct {
	// Mask is the part of the packet mark tether reads and writes; zero
	// means all 32 bits.
	Mask    uint32
	Classes []Class
}

// MarkMask is the effective mask.
func (s Set) MarkMask() uint32 {
	if s.Mask == 0 {
		return ^uint32(0)
	}
	return s.Mask
}

// ByMark returns the class of mark m.
func (s Set) ByMark(m uint32) (Class, bool) {
	for _, c := range s.Classes {
		if c.Mark == m {
			return c, true
		}
	}
	return Class{}, false
}

// Error is a problem with the class at Index in a Set.
type Error struct {
	Index int
	Msg   string
}

func (e *Error) Error() string { return e.Msg }

// Validate returns every problem, each naming the class (and, for a
// conflict, both classes); each error is an *Error.
func (s Set) Validate() []error {
	var errs []error
	mask := s.MarkMask()
	names := map[string]bool{}
	marks := map[uint32]string{}
	for i, c := range s.Classes {
		fail := func(format string, a ...any) {
			errs = append(errs, &Error{i, fmt.Sprintf("class %q: "+format, append([]any{c.Name}, a...)...)})
		}
		switch {
		case c.Name == "":
			errs = append(errs, &Error{i, "a class has no name"})
		case names[c.Name]:
			fail("the name is used twice")
		}
		names[c.Name] = true
		switch {
		case c.Mark == 0:
			fail("mark 0 is no mark (want 1..4294967295)")
		case c.Mark&^mask != 0:
			fail("mark %#x has bits outside the mark mask %#x", c.Mark, mask)
		case marks[c.Mark] != "":
			fail("mark %d is already class %q's", c.Mark, marks[c.Mark])
		default:
			marks[c.Mark] = c.Name
		}
		if c.Protocols&Both == 0 {
			fail("no protocol")
		}
		if len(c.Addrs) == 0 {
			fail("no destination addresses: the class would mark nothing")
		}
		if len(c.Ports) == 0 {
			fail("no destination ports (write all for every port)")
		}
		for _, r := range c.Ports {
			if r.From == 0 || r.To < r.From {
				fail("port range %s is not within 1..65535 in order", r)
			}
		}
	}
	for i, a := range s.Classes {
		for j, b := range s.Classes[i+1:] {
			if what, ok := overlap(a, b); ok {
				errs = append(errs, &Error{i + 1 + j, fmt.Sprintf("classes %q and %q both claim %s", a.Name, b.Name, what)})
			}
		}
	}
	return errs
}

// overlap reports an example (protocol, address, port) two classes both
// claim.
func overlap(a, b Class) (string, bool) {
	p := a.Protocols & b.Protocols
	if p == 0 {
		return "", false
	}
	for _, pa := range a.Addrs {
		for _, pb := range b.Addrs {
			if !pa.Overlaps(pb) {
				continue
			}
			addr := pa
			if pb.Bits() > pa.Bits() {
				addr = pb
			}
			for _, ra := range a.Ports {
				for _, rb := range b.Ports {
					if ra.overlaps(rb) {
						port := max(ra.From, rb.From)
						proto := "tcp"
						if p&TCP == 0 {
							proto = "udp"
						}
						return fmt.Sprintf("%s %s port %d", proto, addr, port), true
					}
				}
			}
		}
	}
	return "", false
}

// Match returns the class that covers a flow of protocol p to dst:port,
// as the nftables rules classify it. Classes do not overlap (Validate), so
// at most one does.
func (s Set) Match(p Protocols, dst netip.Addr, port uint16) (Class, bool) {
	dst = dst.Unmap()
	for _, c := range s.Classes {
		if c.Protocols&p == 0 {
			continue
		}
		inAddr := false
		for _, a := range c.Addrs {
			inAddr = inAddr || a.Contains(dst)
		}
		if !inAddr {
			continue
		}
		for _, r := range c.Ports {
			if r.From <= port && port <= r.To {
				return c, true
			}
		}
	}
	return Class{}, false
}

// ListenPairs are the (address, port)s of a TCP class that names single
// addresses and at most limit of them in all, each of which a listener
// bound to it can serve as a `listen:` service's does, without TPROXY.
// ok is false for a class without TCP, with a prefix, or with more pairs
// (an FTP passive range): those stay TPROXYed.
func (c Class) ListenPairs(limit int) (pairs []netip.AddrPort, ok bool) {
	if c.Protocols&TCP == 0 {
		return nil, false
	}
	n := 0
	for _, r := range c.Ports {
		n += int(r.To) - int(r.From) + 1
	}
	for _, a := range c.Addrs {
		if !a.IsSingleIP() {
			return nil, false
		}
	}
	if n*len(c.Addrs) > limit {
		return nil, false
	}
	for _, a := range c.Addrs {
		for _, r := range c.Ports {
			for p := int(r.From); p <= int(r.To); p++ {
				pairs = append(pairs, netip.AddrPortFrom(a.Addr(), uint16(p)))
			}
		}
	}
	return pairs, len(pairs) > 0
}
