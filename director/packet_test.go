package director

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// ipv4 builds an IPv4 packet with TCP or UDP ports.
func ipv4(proto byte, src, dst netip.AddrPort, ihlWords int) []byte {
	b := make([]byte, ihlWords*4+8)
	b[0] = 0x40 | byte(ihlWords)
	b[9] = proto
	copy(b[12:], src.Addr().AsSlice())
	copy(b[16:], dst.Addr().AsSlice())
	binary.BigEndian.PutUint16(b[ihlWords*4:], src.Port())
	binary.BigEndian.PutUint16(b[ihlWords*4+2:], dst.Port())
	return b
}

// ipv6 builds an IPv6 packet, with the given extension headers (each 8
// bytes: next header, length 0) before the transport header.
func ipv6(proto byte, src, dst netip.AddrPort, ext ...byte) []byte {
	b := make([]byte, 40, 40+8*len(ext)+8)
	b[0] = 0x60
	copy(b[8:], src.Addr().AsSlice())
	copy(b[24:], dst.Addr().AsSlice())
	next := &b[6]
	for _, e := range ext {
		*next = e
		b = append(b, make([]byte, 8)...)
		next = &b[len(b)-8]
	}
	*next = proto
	ports := make([]byte, 8)
	binary.BigEndian.PutUint16(ports, src.Port())
	binary.BigEndian.PutUint16(ports[2:], dst.Port())
	return append(b, ports...)
}

func TestParseFlow(t *testing.T) {
	ap := netip.MustParseAddrPort
	c4, v4 := ap("198.18.1.10:40000"), ap("198.18.0.10:80")
	c6, v6 := ap("[2001:db8::1]:40000"), ap("[2001:db8::10]:443")
	frag := ipv4(unix.IPPROTO_TCP, c4, v4, 5)
	frag[7] = 1 // offset 8 bytes: not the first fragment
	frag6 := ipv6(unix.IPPROTO_UDP, c6, v6, unix.IPPROTO_FRAGMENT)
	frag6[40+3] = 0x08 // offset 1
	for _, tc := range []struct {
		name string
		b    []byte
		want FlowKey
		err  error
	}{
		{"ipv4 tcp", ipv4(unix.IPPROTO_TCP, c4, v4, 5), FlowKey{unix.IPPROTO_TCP, c4, v4}, nil},
		{"ipv4 udp with options", ipv4(unix.IPPROTO_UDP, c4, v4, 7), FlowKey{unix.IPPROTO_UDP, c4, v4}, nil},
		{"ipv6 udp", ipv6(unix.IPPROTO_UDP, c6, v6), FlowKey{unix.IPPROTO_UDP, c6, v6}, nil},
		{"ipv6 tcp after hop-by-hop and dest opts", ipv6(unix.IPPROTO_TCP, c6, v6, unix.IPPROTO_HOPOPTS, unix.IPPROTO_DSTOPTS), FlowKey{unix.IPPROTO_TCP, c6, v6}, nil},
		{"ipv4 icmp", ipv4(unix.IPPROTO_ICMP, c4, v4, 5), FlowKey{}, errNotTCPUDP},
		{"ipv4 later fragment", frag, FlowKey{}, errFragment},
		{"ipv6 later fragment", frag6, FlowKey{}, errFragment},
		{"ipv4 cut in ports", ipv4(unix.IPPROTO_TCP, c4, v4, 5)[:22], FlowKey{}, errShortPacket},
		{"ipv4 header longer than packet", ipv4(unix.IPPROTO_TCP, c4, v4, 15)[:30], FlowKey{}, errShortPacket},
		{"ipv6 cut in header", ipv6(unix.IPPROTO_TCP, c6, v6)[:39], FlowKey{}, errShortPacket},
		{"version 5", []byte{0x50, 0, 0, 0}, FlowKey{}, errIPVersion},
		{"empty", nil, FlowKey{}, errShortPacket},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFlow(tc.b)
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Errorf("ParseFlow = %+v, %v; want %+v, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestParseFlowDoesNotAllocate(t *testing.T) {
	b4 := ipv4(unix.IPPROTO_TCP, netip.MustParseAddrPort("198.18.1.10:40000"), netip.MustParseAddrPort("198.18.0.10:80"), 5)
	b6 := ipv6(unix.IPPROTO_UDP, netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("[2001:db8::10]:443"), unix.IPPROTO_HOPOPTS)
	if n := testing.AllocsPerRun(100, func() { ParseFlow(b4); ParseFlow(b6) }); n != 0 {
		t.Errorf("ParseFlow allocates %.0f times per packet", n)
	}
}

// Any bytes: an error or a flow, never a panic; a flow parsed is TCP or UDP
// with addresses of the packet's version.
func FuzzParseFlow(f *testing.F) {
	f.Add(ipv4(unix.IPPROTO_TCP, netip.MustParseAddrPort("198.18.1.10:40000"), netip.MustParseAddrPort("198.18.0.10:80"), 5))
	f.Add(ipv6(unix.IPPROTO_UDP, netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("[2001:db8::10]:443"), unix.IPPROTO_ROUTING))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseFlow(b)
		if err != nil {
			return
		}
		if k.Proto != unix.IPPROTO_TCP && k.Proto != unix.IPPROTO_UDP {
			t.Fatalf("proto %d", k.Proto)
		}
		if k.Src.Addr().Is4() != (b[0]>>4 == 4) || k.Dst.Addr().Is4() != k.Src.Addr().Is4() {
			t.Fatalf("addresses %v %v from version %d", k.Src, k.Dst, b[0]>>4)
		}
	})
}

func TestParseQueueStats(t *testing.T) {
	text := "    0  12345     3 2 128     7     2   900  1\n    1      0     0 2 128     0     0     0  1\ngarbage line\n"
	got := parseQueueStats([]byte(text))
	want := []QueueStats{{Num: 0, Waiting: 3, QueueDropped: 7, UserDropped: 2}, {Num: 1}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("parseQueueStats = %+v, want %+v", got, want)
	}
}
