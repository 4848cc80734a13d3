package director

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// A conntrack dump, read straight from a netlink socket into a reused
// buffer: each entry yields its original tuple, mark, TCP state and time
// left, and nothing else. A general decoder (github.com/ti-mo/conntrack,
// still used to delete flows) builds a whole flow value per entry, about
// 12 KB of garbage each. The director scans conntrack this way instead of
// following its events: with an event listener in the namespace the
// kernel builds and sends an event for every state change of every flow
// (seven for a short TCP connection), which cost the returning clients'
// connection rate a quarter (see the README's director table).

// ctnetlink's message types and attributes (linux/netfilter/nfnetlink_conntrack.h).
const (
	ctMsgNew = unix.NFNL_SUBSYS_CTNETLINK << 8   // IPCTNL_MSG_CT_NEW (0): a dump's entries
	ctMsgGet = unix.NFNL_SUBSYS_CTNETLINK<<8 | 1 // IPCTNL_MSG_CT_GET

	ctaTupleOrig = 1  // CTA_TUPLE_ORIG
	ctaProtoInfo = 4  // CTA_PROTOINFO
	ctaTimeout   = 7  // CTA_TIMEOUT: seconds left
	ctaMark      = 8  // CTA_MARK
	ctaMarkMask  = 21 // CTA_MARK_MASK
	ctaInfoTCP   = 1  // CTA_PROTOINFO_TCP
	ctaTCPState  = 1  // CTA_PROTOINFO_TCP_STATE

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
)

// ctEntry is what the director reads of one conntrack entry.
type ctEntry struct {
	Key  FlowKey
	Mark uint32
	// State is a TCP flow's conntrack state (0 for other protocols).
	State uint8
	// Left is the time until conntrack forgets the flow, in seconds.
	Left uint32
}

// closed says the entry's connection is over: a TCP flow in TIME_WAIT or
// CLOSE, which conntrack keeps a while for stray packets.
func (e *ctEntry) closed() bool { return e.State == tcpTimeWait || e.State == tcpClose }

// parseCTDump calls fn for each entry in b, one netlink datagram of a
// dump, skipping messages of other sequence numbers than seq. done says b held the dump's end; intr that the kernel flagged a
// change of the table during the dump (entries may be missing); err is
// malformed input or the kernel's error answer. It allocates nothing.
func parseCTDump(b []byte, seq uint32, fn func(ctEntry)) (done, intr bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		m, rest, whole := nextMessage(b)
		if !whole {
			return false, intr, errMalformed
		}
		b = rest
		if m.seq != seq { // the rest of an earlier dump that failed
			continue
		}
		if m.flags&unix.NLM_F_DUMP_INTR != 0 {
			intr = true
		}
		msg := m.body
		switch m.typ {
		case unix.NLMSG_DONE:
			return true, intr, nil
		case unix.NLMSG_ERROR:
			if len(msg) < 4 {
				return false, intr, errMalformed
			}
			if e := int32(binary.NativeEndian.Uint32(msg[:4])); e != 0 {
				return true, intr, fmt.Errorf("conntrack dump: %w", unix.Errno(-e))
			}
			continue
		case ctMsgNew:
		default:
			continue
		}
		if len(msg) < 4 { // struct nfgenmsg
			return false, intr, errMalformed
		}
		var e ctEntry
		ok := false
		err = attrs(msg[4:], func(t uint16, v []byte) error {
			switch t {
			case ctaTupleOrig:
				var err error
				e.Key, err = parseTuple(v)
				ok = err == nil
				return err
			case ctaProtoInfo:
				return attrs(v, func(t uint16, v []byte) error {
					if t != ctaInfoTCP {
						return nil
					}
					return attrs(v, func(t uint16, v []byte) error {
						if t == ctaTCPState && len(v) == 1 {
							e.State = v[0]
						}
						return nil
					})
				})
			case ctaTimeout:
				if len(v) != 4 {
					return errMalformed
				}
				e.Left = binary.BigEndian.Uint32(v)
			case ctaMark:
				if len(v) != 4 {
					return errMalformed
				}
				e.Mark = binary.BigEndian.Uint32(v)
			}
			return nil
		})
		if err != nil {
			return false, intr, err
		}
		if ok {
			fn(e)
		}
	}
	return false, intr, nil
}

// errDumpInterrupted: conntrack's table changed during the dump, which may
// therefore have missed entries.
var errDumpInterrupted = errors.New("conntrack dump: interrupted by changes")

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
					return errMalformed
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
		err = errMalformed
	}
	k.Src, k.Dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	return k, err
}

// ctDumper is a netlink socket that dumps conntrack's table.
type ctDumper struct {
	fd  int
	seq uint32
	buf []byte
}

// dialCTDump opens the socket; do runs in the director's namespace.
func dialCTDump(do func(func() error) error) (*ctDumper, error) {
	var fd int
	err := do(func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		if err = unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			unix.Close(fd)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("conntrack dump: %w", err)
	}
	// A blocked read must not outlive a kernel that stopped answering.
	tv := unix.NsecToTimeval(int64(5 * time.Second))
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &ctDumper{fd: fd, buf: make([]byte, 64<<10)}, nil
}

// dump calls fn for every entry of conntrack's table (both families),
// with the kernel's filter on the entries' marks when mask is not 0:
// entries whose mark&mask is mark&mask. It runs in the caller's
// goroutine, blocking; errDumpInterrupted says entries may be missing.
func (c *ctDumper) dump(mark, mask uint32, fn func(ctEntry)) error {
	c.seq++
	req := appendNlHdr(make([]byte, 0, 40), ctMsgGet, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, c.seq)
	req = append(req, unix.AF_UNSPEC, 0, 0, 0) // nfgenmsg: every family, version 0
	if mask != 0 {
		req = appendAttr(req, ctaMark, binary.BigEndian.AppendUint32(nil, mark))
		req = appendAttr(req, ctaMarkMask, binary.BigEndian.AppendUint32(nil, mask))
	}
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("conntrack dump: %w", err)
	}
	interrupted := false
	for {
		n, err := unix.Read(c.fd, c.buf) // Recvfrom would allocate a sender address a datagram
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			c.drain()
			return fmt.Errorf("conntrack dump: %w", err)
		}
		done, intr, err := parseCTDump(c.buf[:n], c.seq, fn)
		interrupted = interrupted || intr
		switch {
		case err != nil:
			c.drain()
			return err
		case done && interrupted:
			return errDumpInterrupted
		case done:
			return nil
		}
	}
}

// drain reads what is left of a dump that failed, so that the next one
// starts clean.
func (c *ctDumper) drain() {
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, unix.MSG_DONTWAIT)
		if err != nil || n == 0 {
			return
		}
	}
}

// Close closes the socket.
func (c *ctDumper) Close() error { return unix.Close(c.fd) }
