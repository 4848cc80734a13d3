package director

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ctMessageState builds a ctnetlink dump entry as the kernel sends it:
// nfgenmsg, then CTA_TUPLE_ORIG (nested IP and proto), CTA_MARK, a
// CTA_TIMEOUT and, when state is not 0, a CTA_PROTOINFO with that TCP
// state.
func ctMessageState(t testing.TB, typ uint16, flags netlink.HeaderFlags, seq uint32, k FlowKey, mark uint32, state uint8, left uint32) []byte {
	t.Helper()
	ip := netlink.NewAttributeEncoder()
	src, dst := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if k.Src.Addr().Is6() {
		src, dst = ctaIPv6Src, ctaIPv6Dst
	}
	ip.Bytes(src, k.Src.Addr().AsSlice())
	ip.Bytes(dst, k.Dst.Addr().AsSlice())
	proto := netlink.NewAttributeEncoder()
	proto.Uint8(ctaProtoNum, k.Proto)
	proto.ByteOrder = binary.BigEndian
	proto.Uint16(ctaProtoSrc, k.Src.Port())
	proto.Uint16(ctaProtoDst, k.Dst.Port())
	tuple := netlink.NewAttributeEncoder()
	tuple.Nested(ctaTupleIP, func(ae *netlink.AttributeEncoder) error { *ae = *ip; return nil })
	tuple.Nested(ctaTupleProt, func(ae *netlink.AttributeEncoder) error { *ae = *proto; return nil })
	top := netlink.NewAttributeEncoder()
	top.Nested(ctaTupleOrig, func(ae *netlink.AttributeEncoder) error { *ae = *tuple; return nil })
	if state != 0 {
		top.Nested(ctaProtoInfo, func(ae *netlink.AttributeEncoder) error {
			ae.Nested(ctaInfoTCP, func(ae *netlink.AttributeEncoder) error {
				ae.Uint8(ctaTCPState, state)
				return nil
			})
			return nil
		})
	}
	top.ByteOrder = binary.BigEndian
	top.Uint32(ctaTimeout, left)
	top.Uint32(ctaMark, mark)
	attrs, err := top.Encode()
	if err != nil {
		t.Fatal(err)
	}
	data := append([]byte{unix.AF_INET, 0, 0, 0}, attrs...)
	m := netlink.Message{Header: netlink.Header{Length: uint32(unix.NLMSG_HDRLEN + len(data)), Type: netlink.HeaderType(typ), Flags: flags, Sequence: seq}, Data: data}
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A dump's entries of both families yield their tuple, mark, TCP state
// and time left; other messages and other dumps' are skipped; the end and
// the kernel's "interrupted" flag are reported; parsing allocates
// nothing; truncated input is an error, not a panic.
func TestParseCTDump(t *testing.T) {
	k4 := FlowKey{Proto: unix.IPPROTO_TCP, Src: netip.MustParseAddrPort("198.18.1.10:40000"), Dst: netip.MustParseAddrPort("198.18.0.10:80")}
	k6 := FlowKey{Proto: unix.IPPROTO_UDP, Src: netip.MustParseAddrPort("[2001:2::10a]:5353"), Dst: netip.MustParseAddrPort("[2001:2::10]:53")}
	const seq = 7
	var b []byte
	b = append(b, ctMessageState(t, ctMsgNew, netlink.Multi, seq, k4, 0x7e000001, 3, 431999)...)
	b = append(b, ctMessageState(t, ctMsgGet, netlink.Multi, seq, k4, 9, 0, 0)...)   // not an entry
	b = append(b, ctMessageState(t, ctMsgNew, netlink.Multi, seq+1, k4, 9, 3, 5)...) // another dump's
	b = append(b, ctMessageState(t, ctMsgNew, netlink.Multi, seq, k4, 0x7e000001, tcpTimeWait, 118)...)
	b = append(b, ctMessageState(t, ctMsgNew, netlink.Multi, seq, k6, 0x7e000002, 0, 29)...)
	var got []ctEntry
	done, intr, err := parseCTDump(b, seq, func(e ctEntry) { got = append(got, e) })
	if err != nil || done || intr {
		t.Fatalf("done %v, interrupted %v, err %v; want none", done, intr, err)
	}
	want := []ctEntry{{k4, 0x7e000001, 3, 431999}, {k4, 0x7e000001, tcpTimeWait, 118}, {k6, 0x7e000002, 0, 29}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("entries %+v, want %+v", got, want)
	}
	if got[0].closed() || !got[1].closed() || got[2].closed() {
		t.Errorf("closed: %v %v %v, want false true false", got[0].closed(), got[1].closed(), got[2].closed())
	}
	end := ctMessageState(t, unix.NLMSG_DONE, netlink.Multi, seq, k4, 0, 0, 0)
	if done, intr, err := parseCTDump(end, seq, func(ctEntry) {}); !done || intr || err != nil {
		t.Errorf("NLMSG_DONE: done %v, interrupted %v, err %v; want done", done, intr, err)
	}
	flagged := ctMessageState(t, ctMsgNew, netlink.Multi|netlink.HeaderFlags(unix.NLM_F_DUMP_INTR), seq, k4, 1, 3, 1)
	if _, intr, _ := parseCTDump(flagged, seq, func(ctEntry) {}); !intr {
		t.Error("NLM_F_DUMP_INTR not reported")
	}
	var n int
	allocs := testing.AllocsPerRun(100, func() {
		parseCTDump(b, seq, func(ctEntry) { n++ })
	})
	if allocs != 0 {
		t.Errorf("%.0f allocations a datagram, want 0", allocs)
	}
	for cut := 1; cut < len(b); cut += 7 {
		parseCTDump(b[:cut], seq, func(ctEntry) {}) // must not panic
	}
	if _, _, err := parseCTDump(b[:len(b)-3], seq, func(ctEntry) {}); err == nil {
		t.Error("a truncated message parsed without an error")
	}
}

// Whatever the kernel's socket hands over, parsing a dump datagram
// neither panics nor reads past it, and every entry it yields has both
// addresses of its tuple.
func FuzzParseCTDump(f *testing.F) {
	k := FlowKey{Proto: unix.IPPROTO_TCP, Src: netip.MustParseAddrPort("198.18.1.10:40000"), Dst: netip.MustParseAddrPort("198.18.0.10:80")}
	f.Add(ctMessageState(f, ctMsgNew, netlink.Multi, 1, k, 0x7e000001, tcpTimeWait, 100))
	f.Add(ctMessageState(f, unix.NLMSG_DONE, netlink.Multi, 1, k, 0, 0, 0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		parseCTDump(b, 1, func(e ctEntry) {
			if !e.Key.Src.Addr().IsValid() || !e.Key.Dst.Addr().IsValid() {
				t.Fatalf("an entry without both addresses: %+v", e)
			}
		})
	})
}
