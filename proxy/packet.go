package proxy

import (
	"errors"
	"net/netip"

	"golang.org/x/sys/unix"
)

// flowKey is a flow's original direction: what the client sent, before
// any NAT. The director keys its open flows by it, as conntrack's
// original tuple does.
type flowKey struct {
	proto    uint8
	src, dst netip.AddrPort
}

var (
	errShortPacket = errors.New("packet shorter than its headers")
	errNotTCPUDP   = errors.New("not a TCP or UDP packet")
	errFragment    = errors.New("a non-first fragment has no ports")
	errIPVersion   = errors.New("not IPv4 or IPv6")
)

// parseFlow reads the addresses, protocol and ports of an IPv4 or IPv6
// packet that starts with its network header (as NFQUEUE gives it),
// without allocating.
func parseFlow(b []byte) (flowKey, error) {
	if len(b) < 1 {
		return flowKey{}, errShortPacket
	}
	var k flowKey
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return flowKey{}, errShortPacket
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return flowKey{}, errShortPacket
		}
		if b[6]&0x1f != 0 || b[7] != 0 { // fragment offset
			return flowKey{}, errFragment
		}
		k.proto = b[9]
		src, dst := netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		k.src, k.dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		l4 = b[ihl:]
	case 6:
		if len(b) < 40 {
			return flowKey{}, errShortPacket
		}
		src, dst := netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		k.src, k.dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		next, off := b[6], 40
		// Walk the extension headers that may come before TCP or UDP.
		for {
			switch next {
			case unix.IPPROTO_HOPOPTS, unix.IPPROTO_ROUTING, unix.IPPROTO_DSTOPTS:
				if len(b) < off+2 {
					return flowKey{}, errShortPacket
				}
				next, off = b[off], off+(int(b[off+1])+1)*8
				continue
			case unix.IPPROTO_FRAGMENT:
				if len(b) < off+8 {
					return flowKey{}, errShortPacket
				}
				if b[off+2] != 0 || b[off+3]&0xf8 != 0 {
					return flowKey{}, errFragment
				}
				next, off = b[off], off+8
				continue
			}
			break
		}
		if len(b) < off {
			return flowKey{}, errShortPacket
		}
		k.proto, l4 = next, b[off:]
	default:
		return flowKey{}, errIPVersion
	}
	if k.proto != unix.IPPROTO_TCP && k.proto != unix.IPPROTO_UDP {
		return flowKey{}, errNotTCPUDP
	}
	if len(l4) < 4 {
		return flowKey{}, errShortPacket
	}
	k.src = netip.AddrPortFrom(k.src.Addr(), uint16(l4[0])<<8|uint16(l4[1]))
	k.dst = netip.AddrPortFrom(k.dst.Addr(), uint16(l4[2])<<8|uint16(l4[3]))
	return k, nil
}
