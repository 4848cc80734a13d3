package director

import (
	"errors"
	"net/netip"

	"golang.org/x/sys/unix"
)

// FlowKey is a flow's original direction: what the client sent, before
// any NAT. The director keys its open flows by it, as conntrack's
// original tuple does.
type FlowKey struct {
	Proto    uint8 // unix.IPPROTO_TCP or unix.IPPROTO_UDP
	Src, Dst netip.AddrPort
}

var (
	errShortPacket = errors.New("packet shorter than its headers")
	errNotTCPUDP   = errors.New("not a TCP or UDP packet")
	errFragment    = errors.New("a non-first fragment has no ports")
	errIPVersion   = errors.New("not IPv4 or IPv6")
)

// ParseFlow reads the addresses, protocol and ports of an IPv4 or IPv6
// packet that starts with its network header (as NFQUEUE gives it),
// without allocating.
func ParseFlow(b []byte) (FlowKey, error) {
	if len(b) < 1 {
		return FlowKey{}, errShortPacket
	}
	var k FlowKey
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return FlowKey{}, errShortPacket
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return FlowKey{}, errShortPacket
		}
		if b[6]&0x1f != 0 || b[7] != 0 { // fragment offset
			return FlowKey{}, errFragment
		}
		k.Proto = b[9]
		src, dst := netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		k.Src, k.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		l4 = b[ihl:]
	case 6:
		if len(b) < 40 {
			return FlowKey{}, errShortPacket
		}
		src, dst := netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		k.Src, k.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		next, off := b[6], 40
		// Walk the extension headers that may come before TCP or UDP.
		for {
			switch next {
			case unix.IPPROTO_HOPOPTS, unix.IPPROTO_ROUTING, unix.IPPROTO_DSTOPTS:
				if len(b) < off+2 {
					return FlowKey{}, errShortPacket
				}
				next, off = b[off], off+(int(b[off+1])+1)*8
				continue
			case unix.IPPROTO_FRAGMENT:
				if len(b) < off+8 {
					return FlowKey{}, errShortPacket
				}
				if b[off+2] != 0 || b[off+3]&0xf8 != 0 {
					return FlowKey{}, errFragment
				}
				next, off = b[off], off+8
				continue
			}
			break
		}
		if len(b) < off {
			return FlowKey{}, errShortPacket
		}
		k.Proto, l4 = next, b[off:]
	default:
		return FlowKey{}, errIPVersion
	}
	if k.Proto != unix.IPPROTO_TCP && k.Proto != unix.IPPROTO_UDP {
		return FlowKey{}, errNotTCPUDP
	}
	if len(l4) < 4 {
		return FlowKey{}, errShortPacket
	}
	k.Src = netip.AddrPortFrom(k.Src.Addr(), uint16(l4[0])<<8|uint16(l4[1]))
	k.Dst = netip.AddrPortFrom(k.Dst.Addr(), uint16(l4[2])<<8|uint16(l4[3]))
	return k, nil
}
