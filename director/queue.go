package director

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A queue is one NFQUEUE, bound, read and answered on its own netlink
// socket, with buffers it reuses: a packet costs one receive (several
// when the socket holds several) and one verdict write, and no
// allocation. go-nfqueue, used before, peeked at each message before
// reading it, allocated a page and a parsed message per packet and six
// slices per verdict, and sent through a system call the runtime treats
// as blocking; under a flood of new clients a profile put a quarter of
// the director's CPU in that library's receive and the collections its
// garbage caused (README, Performance).

// Netlink's and nfnetlink_queue's numbers (linux/netfilter/nfnetlink_queue.h).
const (
	nfnlSubsysQueue = 3 // NFNL_SUBSYS_QUEUE
	nfqnlMsgPacket  = 0 // NFQNL_MSG_PACKET
	nfqnlMsgVerdict = 1 // NFQNL_MSG_VERDICT
	nfqnlMsgConfig  = 2 // NFQNL_MSG_CONFIG

	nfqaPacketHdr  = 1  // NFQA_PACKET_HDR
	nfqaVerdictHdr = 2  // NFQA_VERDICT_HDR
	nfqaMark       = 3  // NFQA_MARK
	nfqaPayload    = 10 // NFQA_PAYLOAD

	nfqaCfgCmd      = 1 // NFQA_CFG_CMD
	nfqaCfgParams   = 2 // NFQA_CFG_PARAMS
	nfqaCfgQueueMax = 3 // NFQA_CFG_QUEUE_MAXLEN
	nfqaCfgMask     = 4 // NFQA_CFG_MASK
	nfqaCfgFlags    = 5 // NFQA_CFG_FLAGS

	nfqnlCfgCmdBind  = 1 // NFQNL_CFG_CMD_BIND
	nfqnlCopyPacket  = 2 // NFQNL_COPY_PACKET
	nfqaCfgFFailOpen = 1 // NFQA_CFG_F_FAIL_OPEN
	nfqaCfgFGSO      = 4 // NFQA_CFG_F_GSO

	nfAccept = 1 // NF_ACCEPT
	nfDrop   = 0 // NF_DROP

	genHdrLen  = 4 // struct nfgenmsg
	verdictLen = unix.NLMSG_HDRLEN + genHdrLen + 12
	markLen    = 8
	copyRange  = 128 // bytes of each packet copied up: its headers
)

type queue struct {
	closed atomic.Bool
	num    uint16
	handle func(*queue, packet) // answers a packet
	onErr  func(error)          // told of an error answer to a verdict
	fd     uintptr              // the socket, for the reader's verdicts: the file holds it open
	f      *os.File
	rc     syscall.RawConn
	in     []byte                     // the receive buffer
	out    [verdictLen + markLen]byte // the verdict buffer
}

// packet is a queued packet's id, mark and first bytes.
type packet struct {
	id      uint32
	mark    uint32
	payload []byte // in the receive buffer: valid until the next receive
}

// openQueue binds queue num, holding length packets, failOpen to accept
// what does not fit. Packets that arrive before the bind's answer go to
// handle, and error answers to their verdicts to onErr, as later ones do.
func openQueue(num uint16, length uint32, failOpen bool, handle func(*queue, packet), onErr func(error)) (*queue, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, err
	}
	q := &queue{num: num, handle: handle, onErr: onErr, fd: uintptr(fd), in: make([]byte, 64<<10)}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	// The bind's answer must not wait forever on a kernel that sends none.
	tv := unix.NsecToTimeval(int64(5 * time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, err
	}
	flags := uint32(nfqaCfgFGSO)
	if failOpen {
		flags |= nfqaCfgFFailOpen
	}
	q.initVerdict()
	if err := q.bind(fd, length, flags); err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, err
	}
	q.f = os.NewFile(uintptr(fd), fmt.Sprintf("nfqueue %d", num))
	if q.rc, err = q.f.SyscallConn(); err != nil {
		q.f.Close()
		ok = true // closed with the file
		return nil, err
	}
	ok = true
	return q, nil
}

// bind sends the queue's configuration in one message (the kernel makes
// the queue, then sets its copy mode, length and flags) and reads until
// its answer.
func (q *queue) bind(fd int, length uint32, flags uint32) error {
	const seq = 1
	b := make([]byte, 0, 64)
	b = appendNlHdr(b, nfnlSubsysQueue<<8|nfqnlMsgConfig, unix.NLM_F_REQUEST|unix.NLM_F_ACK, seq)
	b = append(b, unix.AF_UNSPEC, unix.NFNETLINK_V0, byte(q.num>>8), byte(q.num))
	b = appendAttr(b, nfqaCfgCmd, []byte{nfqnlCfgCmdBind, 0, 0, 0})
	b = appendAttr(b, nfqaCfgParams, append(binary.BigEndian.AppendUint32(nil, copyRange), nfqnlCopyPacket))
	b = appendAttr(b, nfqaCfgQueueMax, binary.BigEndian.AppendUint32(nil, length))
	b = appendAttr(b, nfqaCfgMask, binary.BigEndian.AppendUint32(nil, flags))
	b = appendAttr(b, nfqaCfgFlags, binary.BigEndian.AppendUint32(nil, flags))
	binary.NativeEndian.PutUint32(b, uint32(len(b)))
	if _, err := unix.Write(fd, b); err != nil {
		return err
	}
	for {
		n, _, err := unix.Recvfrom(fd, q.in, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return errors.New("no answer from the kernel in 5 s")
			}
			return err
		}
		if answered, err := q.dispatch(q.in[:n], seq); answered {
			return err
		}
	}
}

// dispatch hands each packet message of datagram b to q.handle and each
// error answer to a verdict (ENOENT: the packet was gone) to q.onErr, and
// reports the answer to request seq, when there is one: answered, and its
// error (nil for an ACK).
func (q *queue) dispatch(b []byte, seq uint32) (answered bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		m, rest, ok := nextMessage(b)
		if !ok {
			return answered, err
		}
		b = rest
		switch body := m.body; {
		case m.typ == unix.NLMSG_ERROR && len(body) >= 4:
			e := syscall.Errno(-int32(binary.NativeEndian.Uint32(body)))
			if seq != 0 && m.seq == seq {
				answered = true
				if e != 0 {
					err = e
				}
			} else if e != 0 {
				q.onErr(e)
			}
		case m.typ == nfnlSubsysQueue<<8|nfqnlMsgPacket && len(body) >= genHdrLen:
			if p, ok := parsePacket(body[genHdrLen:]); ok {
				q.handle(q, p)
			}
		}
	}
	return answered, err
}

// parsePacket reads a packet message's attributes; ok false without an id
// or a payload.
func parsePacket(a []byte) (p packet, ok bool) {
	var id, payload bool
	attrs(a, func(t uint16, v []byte) error {
		switch {
		case t == nfqaPacketHdr && len(v) >= 4:
			p.id, id = binary.BigEndian.Uint32(v), true
		case t == nfqaMark && len(v) >= 4:
			p.mark = binary.BigEndian.Uint32(v)
		case t == nfqaPayload:
			p.payload, payload = v, true
		}
		return nil
	}) // a malformed tail: what came before it stands
	return p, id && payload
}

// run reads the queue until it is closed (nil) or a receive error stop
// says ends it. Each wake-up reads
// every datagram the socket holds: a receive and its verdicts are raw
// system calls, which neither block nor let the runtime hand the thread's
// processor away.
func (q *queue) run(stop func(error) bool) error {
	var end error
	err := q.rc.Read(func(fd uintptr) bool {
		for {
			n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&q.in[0])), uintptr(len(q.in)), unix.MSG_DONTWAIT, 0, 0)
			switch errno {
			case 0:
				q.dispatch(q.in[:n], 0)
				continue
			case unix.EAGAIN:
				return false // the poller wakes us when there is more
			case unix.EINTR:
				continue
			}
			if stop(errno) {
				end = errno
				return true
			}
		}
	})
	if q.closed.Load() {
		return nil // the poller's "use of closed file"
	}
	if err != nil {
		return err
	}
	return end
}

// Close unbinds the queue: the kernel forgets a queue whose socket goes.
func (q *queue) Close() error {
	q.closed.Store(true)
	return q.f.Close()
}

func (q *queue) initVerdict() {
	b := q.out[:]
	appendNlHdr(b[:0], nfnlSubsysQueue<<8|nfqnlMsgVerdict, unix.NLM_F_REQUEST, 0) // no ACK: an error answer comes anyway
	b[unix.NLMSG_HDRLEN], b[unix.NLMSG_HDRLEN+1] = unix.AF_UNSPEC, unix.NFNETLINK_V0
	binary.BigEndian.PutUint16(b[unix.NLMSG_HDRLEN+2:], q.num)
	binary.NativeEndian.PutUint16(b[unix.NLMSG_HDRLEN+genHdrLen:], 12)
	binary.NativeEndian.PutUint16(b[unix.NLMSG_HDRLEN+genHdrLen+2:], nfqaVerdictHdr)
	binary.NativeEndian.PutUint16(b[verdictLen:], markLen)
	binary.NativeEndian.PutUint16(b[verdictLen+2:], nfqaMark)
}

// verdictMessage is the verdict for packet id, with mark when set, in the
// queue's verdict buffer.
func (q *queue) verdictMessage(id uint32, verdict int, mark uint32, set bool) []byte {
	n := verdictLen
	if set {
		n += markLen
		binary.BigEndian.PutUint32(q.out[verdictLen+4:], mark)
	}
	binary.NativeEndian.PutUint32(q.out[0:], uint32(n))
	binary.BigEndian.PutUint32(q.out[unix.NLMSG_HDRLEN+genHdrLen+4:], uint32(verdict))
	binary.BigEndian.PutUint32(q.out[unix.NLMSG_HDRLEN+genHdrLen+8:], id)
	return q.out[:n]
}

// verdict answers packet id; from the reader only (handle), whose
// receive holds the socket open.
func (q *queue) verdict(id uint32, verdict int, mark uint32, set bool) error {
	b := q.verdictMessage(id, verdict, mark, set)
	// A write to the kernel's netlink port does not wait for anything:
	// the kernel takes the verdict and sends the packet on its way
	// before it returns.
	if _, _, errno := unix.RawSyscall(unix.SYS_WRITE, q.fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b))); errno != 0 {
		return errno
	}
	return nil
}
