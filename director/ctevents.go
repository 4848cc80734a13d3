package director

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// Conntrack's new-flow, update and destroy events, read straight from a netlink
// socket into a reused buffer: each event yields its original tuple and
// mark and nothing else. A general decoder (github.com/ti-mo/conntrack,
// still used for dumps) builds a whole flow value per event, about 12 KB
// of garbage a connection at the director's rates.

// ctnetlink's message types and attributes (linux/netfilter/nfnetlink_conntrack.h).
const (
	ctMsgNew    = unix.NFNL_SUBSYS_CTNETLINK << 8   // IPCTNL_MSG_CT_NEW (0)
	ctMsgDelete = unix.NFNL_SUBSYS_CTNETLINK<<8 | 2 // IPCTNL_MSG_CT_DELETE

	ctaTupleOrig = 1 // CTA_TUPLE_ORIG
	ctaProtoInfo = 4 // CTA_PROTOINFO
	ctaMark      = 8 // CTA_MARK
	ctaInfoTCP   = 1 // CTA_PROTOINFO_TCP
	ctaTCPState  = 1 // CTA_PROTOINFO_TCP_STATE

	// TCP_CONNTRACK_TIME_WAIT and _CLOSE: the connection is over.
	tcpTimeWait  = 7
	tcpClose     = 8
	ctaTupleIP   = 1 // CTA_TUPLE_IP
	ctaTupleProt = 2 // CTA_TUPLE_PROTO
	ctaIPv4Src   = 1 // CTA_IP_V4_SRC
	ctaIPv4Dst   = 2
	ctaIPv6Src   = 3
	ctaIPv6Dst   = 4
	ctaProtoNum  = 1 // CTA_PROTO_NUM
	ctaProtoSrc  = 2 // CTA_PROTO_SRC_PORT
	ctaProtoDst  = 3

	nlaTypeMask = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
)

// ctEventKind is what a conntrack event says of a flow.
type ctEventKind uint8

const (
	ctNew     ctEventKind = iota + 1
	ctClosed              // a TCP flow reached TIME_WAIT or CLOSE: its connection is over
	ctDestroy             // conntrack forgot the flow
)

var errCTMessage = errors.New("conntrack event: malformed message")

// parseCTEvents calls fn for each new-flow or destroy event in b, one
// netlink datagram. It allocates nothing.
func parseCTEvents(b []byte, fn func(kind ctEventKind, k FlowKey, mark uint32)) error {
	for len(b) >= unix.NLMSG_HDRLEN {
		n := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		flags := binary.NativeEndian.Uint16(b[6:8])
		if n < unix.NLMSG_HDRLEN || n > len(b) {
			return errCTMessage
		}
		msg := b[unix.NLMSG_HDRLEN:n]
		if next := (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1); next < len(b) {
			b = b[next:]
		} else {
			b = nil
		}
		var kind ctEventKind
		switch typ {
		case ctMsgNew: // a new flow (NLM_F_CREATE), or an update of one
			kind = ctNew
			if flags&unix.NLM_F_CREATE == 0 {
				kind = ctClosed // if its TCP state says so, below
			}
		case ctMsgDelete:
			kind = ctDestroy
		default: // NLMSG_ERROR, NLMSG_DONE, other subsystems' messages
			continue
		}
		if len(msg) < 4 { // struct nfgenmsg
			return errCTMessage
		}
		var k FlowKey
		var mark uint32
		var state uint8
		ok := false
		err := attrs(msg[4:], func(t uint16, v []byte) error {
			switch t {
			case ctaTupleOrig:
				var err error
				k, err = parseTuple(v)
				ok = err == nil
				return err
			case ctaProtoInfo:
				return attrs(v, func(t uint16, v []byte) error {
					if t != ctaInfoTCP {
						return nil
					}
					return attrs(v, func(t uint16, v []byte) error {
						if t == ctaTCPState && len(v) == 1 {
							state = v[0]
						}
						return nil
					})
				})
			case ctaMark:
				if len(v) != 4 {
					return errCTMessage
				}
				mark = binary.BigEndian.Uint32(v)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if kind == ctClosed && state != tcpTimeWait && state != tcpClose {
			continue // an update that does not end the connection
		}
		if ok {
			fn(kind, k, mark)
		}
	}
	return nil
}

// parseTuple reads a CTA_TUPLE_ORIG's addresses, protocol and ports.
func parseTuple(b []byte) (FlowKey, error) {
	var k FlowKey
	var src, dst netip.Addr
	var sport, dport uint16
	err := attrs(b, func(t uint16, v []byte) error {
		switch t {
		case ctaTupleIP:
			return attrs(v, func(t uint16, v []byte) error {
				a, ok := netip.AddrFromSlice(v)
				if !ok {
					return errCTMessage
				}
				switch t {
				case ctaIPv4Src, ctaIPv6Src:
					src = a.Unmap()
				case ctaIPv4Dst, ctaIPv6Dst:
					dst = a.Unmap()
				}
				return nil
			})
		case ctaTupleProt:
			return attrs(v, func(t uint16, v []byte) error {
				switch {
				case t == ctaProtoNum && len(v) == 1:
					k.Proto = v[0]
				case t == ctaProtoSrc && len(v) == 2:
					sport = binary.BigEndian.Uint16(v)
				case t == ctaProtoDst && len(v) == 2:
					dport = binary.BigEndian.Uint16(v)
				}
				return nil
			})
		}
		return nil
	})
	if err == nil && (!src.IsValid() || !dst.IsValid()) {
		err = errCTMessage
	}
	k.Src, k.Dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	return k, err
}

// attrs calls fn for each netlink attribute in b: its type without the
// nested and byte-order flags, and its value.
func attrs(b []byte, fn func(t uint16, v []byte) error) error {
	for len(b) >= unix.NLA_HDRLEN {
		n := int(binary.NativeEndian.Uint16(b[0:2]))
		t := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if n < unix.NLA_HDRLEN || n > len(b) {
			return errCTMessage
		}
		if err := fn(t, b[unix.NLA_HDRLEN:n]); err != nil {
			return err
		}
		next := (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if next >= len(b) {
			return nil
		}
		b = b[next:]
	}
	return nil
}

// ctEvents is a netlink socket subscribed to conntrack's new-flow (when
// news), update and destroy events, read through the runtime's poller.
type ctEvents struct {
	f   *os.File
	buf []byte
}

// dialCTEvents opens the socket; do runs in the director's namespace.
func dialCTEvents(do func(func() error) error, news bool) (*ctEvents, error) {
	// Updates carry a TCP flow's state: its close ends the connection
	// two minutes before conntrack forgets it (TIME_WAIT).
	groups := uint32(1)<<(unix.NFNLGRP_CONNTRACK_DESTROY-1) | 1<<(unix.NFNLGRP_CONNTRACK_UPDATE-1)
	if news {
		groups |= 1 << (unix.NFNLGRP_CONNTRACK_NEW - 1)
	}
	var fd int
	err := do(func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		if err = unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
			unix.Close(fd)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("conntrack events: %w", err)
	}
	// Room for bursts; the kernel drops events (ENOBUFS) past it, and the
	// director then reconciles with a dump.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	return &ctEvents{f: os.NewFile(uintptr(fd), "conntrack-events"), buf: make([]byte, 64<<10)}, nil
}

// run reads events and calls fn for each until Close (nil) or an error
// (ENOBUFS: events were lost).
func (c *ctEvents) run(fn func(kind ctEventKind, k FlowKey, mark uint32)) error {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), c.buf, 0)
			return rerr != unix.EAGAIN
		})
		if errors.Is(err, os.ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		if rerr != nil {
			return rerr
		}
		if err := parseCTEvents(c.buf[:n], fn); err != nil {
			return err
		}
	}
}

// Close stops run.
func (c *ctEvents) Close() error { return c.f.Close() }
