package affinity

import (
	"fmt"
	"math/bits"
	"net/netip"
	"strconv"
	"strings"
)

// A Mask groups client addresses before they are looked up: every client in
// one masked prefix shares one template, like ipvsadm's -M (persistent
// netmask). It holds a prefix length for each family, so one service can take
// IPv4 and IPv6 clients (a firewall-mark service covers both).
//
// The zero value is /32 for IPv4 and /128 for IPv6: each client on its own.
type Mask struct {
	// Host bits cleared, rather than prefix lengths, so that the zero value
	// is the default.
	host4, host6 uint8
}

// NewMask returns the mask with the given prefix lengths: 0..32 for IPv4 (0
// puts every IPv4 client in one template) and 1..128 for IPv6.
func NewMask(bits4, bits6 int) (Mask, error) {
	if bits4 < 0 || bits4 > 32 {
		return Mask{}, fmt.Errorf("ipv4 prefix length %d is outside 0..32", bits4)
	}
	if bits6 < 1 || bits6 > 128 {
		return Mask{}, fmt.Errorf("ipv6 prefix length %d is outside 1..128", bits6)
	}
	return Mask{host4: uint8(32 - bits4), host6: uint8(128 - bits6)}, nil
}

// ParseMask4 parses an IPv4 persistence netmask as ipvsadm and keepalived
// write it: a dotted mask ("255.255.255.0") or a prefix length ("24" or
// "/24"). A non-contiguous mask is an error.
func ParseMask4(s string) (int, error) {
	in := strings.TrimSpace(s)
	if strings.Contains(in, ".") {
		a, err := netip.ParseAddr(in)
		if err != nil || !a.Is4() {
			return 0, fmt.Errorf("netmask %q is not an IPv4 dotted mask", s)
		}
		b := a.As4()
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		ones := bits.LeadingZeros32(^v)
		if ones < 32 && v<<ones != 0 {
			return 0, fmt.Errorf("netmask %q is not contiguous (ones must come first)", s)
		}
		return ones, nil
	}
	n, err := parsePrefixLen(in)
	if err != nil || n > 32 {
		return 0, fmt.Errorf("netmask %q is neither a dotted IPv4 mask nor a prefix length 0..32", s)
	}
	return n, nil
}

// ParseMask6 parses an IPv6 persistence prefix length, "64" or "/64", 1..128.
func ParseMask6(s string) (int, error) {
	n, err := parsePrefixLen(strings.TrimSpace(s))
	if err != nil || n < 1 || n > 128 {
		return 0, fmt.Errorf("ipv6 netmask %q is not a prefix length 1..128", s)
	}
	return n, nil
}

func parsePrefixLen(s string) (int, error) {
	s = strings.TrimPrefix(s, "/")
	if s == "" || len(s) > 3 {
		return 0, strconv.ErrSyntax
	}
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, strconv.ErrSyntax
		}
		n = n*10 + int(c-'0')
	}
	return n, nil
}

// ParseMask parses the IPv4 and IPv6 parts of a persistence netmask; an
// empty part keeps its default (/32, /128).
func ParseMask(v4, v6 string) (Mask, error) {
	b4, b6 := 32, 128
	var err error
	if v4 != "" {
		if b4, err = ParseMask4(v4); err != nil {
			return Mask{}, err
		}
	}
	if v6 != "" {
		if b6, err = ParseMask6(v6); err != nil {
			return Mask{}, err
		}
	}
	return NewMask(b4, b6)
}

// Bits4 is the IPv4 prefix length.
func (m Mask) Bits4() int { return 32 - int(m.host4) }

// Bits6 is the IPv6 prefix length.
func (m Mask) Bits6() int { return 128 - int(m.host6) }

// String renders the mask the way ipvsadm -L shows it, with the IPv6 prefix
// after a slash: "255.255.255.0/128".
func (m Mask) String() string {
	v := ^uint32(0)
	if m.host4 == 32 {
		v = 0
	} else {
		v <<= m.host4
	}
	a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	return a.String() + "/" + strconv.Itoa(m.Bits6())
}

// Apply returns the client address with its host bits cleared. An
// IPv4-mapped IPv6 address is treated as the IPv4 address it carries, and a
// zone is dropped: neither names a different client.
func (m Mask) Apply(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		if m.host4 == 32 {
			v = 0
		} else {
			v &= ^uint32(0) << m.host4
		}
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	b := a.As16()
	clearHost(&b, int(m.host6))
	return netip.AddrFrom16(b)
}

// clearHost zeroes the last n bits of b.
func clearHost(b *[16]byte, n int) {
	for i := 15; n > 0 && i >= 0; i-- {
		if n >= 8 {
			b[i] = 0
			n -= 8
			continue
		}
		b[i] &= 0xff << n
		n = 0
	}
}
