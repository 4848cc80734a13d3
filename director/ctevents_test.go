package director

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ctMessage builds a ctnetlink event as the kernel sends it: nfgenmsg,
// then CTA_TUPLE_ORIG (nested IP and proto) and CTA_MARK.
func ctMessage(t *testing.T, typ uint16, k FlowKey, mark uint32) []byte {
	return ctMessageState(t, typ, netlink.Create, k, mark, 0)
}

// ctMessageState is ctMessage with header flags and, when state is not 0,
// a CTA_PROTOINFO with that TCP state.
func ctMessageState(t *testing.T, typ uint16, flags netlink.HeaderFlags, k FlowKey, mark uint32, state uint8) []byte {
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
	top.Uint32(ctaMark, mark)
	attrs, err := top.Encode()
	if err != nil {
		t.Fatal(err)
	}
	data := append([]byte{unix.AF_INET, 0, 0, 0}, attrs...)
	m := netlink.Message{Header: netlink.Header{Length: uint32(unix.NLMSG_HDRLEN + len(data)), Type: netlink.HeaderType(typ), Flags: flags}, Data: data}
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// New-flow, close (an update to TIME_WAIT) and destroy events of both
// families yield their tuple and mark; other updates and messages are
// skipped; parsing allocates nothing; truncated input
// is an error, not a panic.
func TestParseCTEvents(t *testing.T) {
	k4 := FlowKey{Proto: unix.IPPROTO_TCP, Src: netip.MustParseAddrPort("198.18.1.10:40000"), Dst: netip.MustParseAddrPort("198.18.0.10:80")}
	k6 := FlowKey{Proto: unix.IPPROTO_UDP, Src: netip.MustParseAddrPort("[2001:2::10a]:5353"), Dst: netip.MustParseAddrPort("[2001:2::10]:53")}
	var b []byte
	b = append(b, ctMessage(t, ctMsgNew, k4, 0x7e000001)...)
	b = append(b, ctMessage(t, unix.NFNL_SUBSYS_CTNETLINK<<8|1, k4, 9)...)        // a GET: not an event of ours
	b = append(b, ctMessageState(t, ctMsgNew, 0, k4, 0x7e000001, 3)...)           // an update to ESTABLISHED: not an end
	b = append(b, ctMessageState(t, ctMsgNew, 0, k4, 0x7e000001, tcpTimeWait)...) // the close
	b = append(b, ctMessage(t, ctMsgDelete, k6, 0x7e000002)...)
	type ev struct {
		kind ctEventKind
		k    FlowKey
		mark uint32
	}
	var got []ev
	if err := parseCTEvents(b, func(kind ctEventKind, k FlowKey, mark uint32) { got = append(got, ev{kind, k, mark}) }); err != nil {
		t.Fatal(err)
	}
	want := []ev{{ctNew, k4, 0x7e000001}, {ctClosed, k4, 0x7e000001}, {ctDestroy, k6, 0x7e000002}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("events %+v, want %+v", got, want)
	}
	var n int
	allocs := testing.AllocsPerRun(100, func() {
		parseCTEvents(b, func(ctEventKind, FlowKey, uint32) { n++ })
	})
	if allocs != 0 {
		t.Errorf("%.0f allocations a datagram, want 0", allocs)
	}
	for cut := 1; cut < len(b); cut += 7 {
		parseCTEvents(b[:cut], func(ctEventKind, FlowKey, uint32) {}) // must not panic
	}
	if err := parseCTEvents(b[:len(b)-3], func(ctEventKind, FlowKey, uint32) {}); err == nil {
		t.Error("a truncated message parsed without an error")
	}
}
