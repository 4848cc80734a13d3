package udpbatch

import (
	"net/netip"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr of recvmmsg(2) and sendmmsg(2). Go pads it to
// the alignment of Msghdr, as C does.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// Reader reads up to len(bufs) datagrams with one recvmmsg(2), and
// their sources, without allocating. x/net's ReadBatch would allocate a
// net.Addr per datagram.
type Reader struct {
	msgs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	bufs  [][]byte
	got   int
	errno syscall.Errno
	recvF func(fd uintptr) bool // b.recv, made once: a method value per read would allocate
}

func NewReader(n, size int) *Reader {
	b := &Reader{msgs: make([]mmsghdr, n), iovs: make([]unix.Iovec, n), names: make([]unix.RawSockaddrInet6, n), bufs: make([][]byte, n)}
	for i := range n {
		b.bufs[i] = make([]byte, size)
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(size)
		b.msgs[i].hdr.Iov = &b.iovs[i]
		b.msgs[i].hdr.SetIovlen(1)
		b.msgs[i].hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
	}
	b.recvF = b.recv
	return b
}

// recv is one non-blocking recvmmsg on fd; false means nothing was there
// (wait for the socket to be readable), as syscall.RawConn.Read wants.
func (b *Reader) recv(fd uintptr) bool {
	for i := range b.msgs {
		b.msgs[i].hdr.Namelen = unix.SizeofSockaddrInet6
		b.msgs[i].hdr.Flags = 0
	}
	r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.msgs[0])), uintptr(len(b.msgs)), unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	b.got, b.errno = int(r), e
	return true
}

// Read waits for datagrams on rc and returns how many it took (at least
// one). The socket's read deadline applies.
func (b *Reader) Read(rc syscall.RawConn) (int, error) {
	if err := rc.Read(b.recvF); err != nil {
		return 0, err // net.ErrClosed once the socket is closed
	}
	return b.result()
}

func (b *Reader) result() (int, error) {
	if b.errno != 0 {
		return 0, b.errno
	}
	return b.got, nil
}

// Msg is the i-th datagram of the last read and its source. A truncated
// datagram (larger than the buffers) is reported as not ok.
func (b *Reader) Msg(i int) (data []byte, src netip.AddrPort, ok bool) {
	m := &b.msgs[i]
	if m.hdr.Flags&unix.MSG_TRUNC != 0 {
		return nil, netip.AddrPort{}, false
	}
	return b.bufs[i][:m.n], sockaddrPort(&b.names[i]), true
}

// sockaddrPort reads a sockaddr_in or sockaddr_in6 the kernel filled in.
func sockaddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(p[0])<<8|uint16(p[1]))
	}
	return netip.AddrPort{}
}

// Writer sends several datagrams on a connected socket with one
// sendmmsg(2).
type Writer struct {
	msgs  []mmsghdr
	iovs  []unix.Iovec
	todo  []mmsghdr // the part of msgs not sent yet
	errno syscall.Errno
	send  func(fd uintptr) bool
}

func NewWriter(n int) *Writer {
	w := &Writer{msgs: make([]mmsghdr, n), iovs: make([]unix.Iovec, n)}
	for i := range n {
		w.msgs[i].hdr.Iov = &w.iovs[i]
		w.msgs[i].hdr.SetIovlen(1)
	}
	w.send = func(fd uintptr) bool {
		for len(w.todo) > 0 {
			r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.todo[0])), uintptr(len(w.todo)), unix.MSG_DONTWAIT, 0, 0)
			switch {
			case e == unix.EAGAIN:
				return false
			case e == unix.EINTR:
				continue
			case e != 0:
				w.errno = e
				return true
			}
			w.todo = w.todo[r:]
		}
		return true
	}
	return w
}

// Write sends bufs (at most len(w.msgs)) on rc, a connected socket.
func (w *Writer) Write(rc syscall.RawConn, bufs [][]byte) error {
	return w.WriteTo(rc, bufs, nil, 0)
}

// WriteTo sends bufs on rc to the address in name (namelen bytes of it);
// nil for a connected socket.
func (w *Writer) WriteTo(rc syscall.RawConn, bufs [][]byte, name *unix.RawSockaddrInet6, namelen uint32) error {
	for i, b := range bufs {
		w.iovs[i].Base = unsafe.SliceData(b) // nil for an empty datagram: length 0
		w.iovs[i].SetLen(len(b))
		w.msgs[i].hdr.Name, w.msgs[i].hdr.Namelen = (*byte)(unsafe.Pointer(name)), namelen
	}
	w.todo, w.errno = w.msgs[:len(bufs)], 0
	if err := rc.Write(w.send); err != nil {
		return err
	}
	if w.errno != 0 {
		return w.errno
	}
	return nil
}

// Unsent is how many datagrams the last write did not send.
func (w *Writer) Unsent() int { return len(w.todo) }

// Sockaddr writes ap as the sockaddr a socket of family takes (an IPv4
// client of a dual-stack socket as an IPv4-mapped address) and returns its
// length.
func Sockaddr(ap netip.AddrPort, family int, sa *unix.RawSockaddrInet6) uint32 {
	*sa = unix.RawSockaddrInet6{}
	port := (*[2]byte)(unsafe.Pointer(&sa.Port)) // same offset in both
	if family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		sa4.Family = unix.AF_INET
		sa4.Addr = ap.Addr().Unmap().As4()
		port[0], port[1] = byte(ap.Port()>>8), byte(ap.Port())
		return unix.SizeofSockaddrInet4
	}
	sa.Family = unix.AF_INET6
	sa.Addr = ap.Addr().As16()
	port[0], port[1] = byte(ap.Port()>>8), byte(ap.Port())
	return unix.SizeofSockaddrInet6
}

// Family is the address family of c's socket: a wildcard listener
// is AF_INET6 (dual stack) even for "0.0.0.0".
func Family(rc syscall.RawConn) (int, error) {
	var fam int
	var serr error
	if err := rc.Control(func(fd uintptr) { fam, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN) }); err != nil {
		return 0, err
	}
	return fam, serr
}

// batch is what a relay borrows from its pool while it moves
// replies: buffers for one recvmmsg from its server's socket, headers for
// one sendmmsg to its client. A flow holds one only while replies are
// there to read, so a million idle flows hold no buffers.
type batch struct {
	in   *Reader
	out  *Writer
	bufs [][]byte
}

// Pool lends batches to relays: a relay borrows one only while datagrams
// are queued, so that many idle flows hold no buffers.
type Pool struct{ p sync.Pool }

// NewPool makes a pool of batches of n datagrams of up to 64 KiB.
func NewPool(n int) *Pool {
	pl := &Pool{}
	pl.p.New = func() any {
		return &batch{in: NewReader(n, 64<<10), out: NewWriter(n), bufs: make([][]byte, 0, n)}
	}
	return pl
}

// Relay reads what is queued on a connected socket, a batch a call,
// in a batch borrowed from its pool only while there is
// something to read: a flow waiting for datagrams holds no buffer.
type Relay struct {
	pool *Pool
	rb   *batch
	recv func(fd uintptr) bool // made once per relay
}

func NewRelay(pool *Pool) *Relay {
	r := &Relay{pool: pool}
	r.recv = func(fd uintptr) bool {
		if r.rb == nil {
			r.rb = r.pool.p.Get().(*batch)
		}
		if !r.rb.in.recv(fd) {
			r.pool.p.Put(r.rb) // nothing there: wait without the buffers
			r.rb = nil
			return false
		}
		return true
	}
	return r
}

// next waits for datagrams on from (its read deadline applies) and returns
// them, their total size, and the batch to send them with; done gives the
// batch back. On an error nothing is held.
func (r *Relay) Next(from syscall.RawConn) (bufs [][]byte, total int, out *Writer, err error) {
	err = from.Read(r.recv)
	n := 0
	if err == nil {
		n, err = r.rb.in.result()
	}
	if err != nil {
		r.Done()
		return nil, 0, nil, err
	}
	bufs = r.rb.bufs[:0]
	for i := range n {
		if b, _, ok := r.rb.in.Msg(i); ok {
			bufs, total = append(bufs, b), total+len(b)
		}
	}
	return bufs, total, r.rb.out, nil
}

// done gives the borrowed batch back.
func (r *Relay) Done() {
	if r.rb != nil {
		r.pool.p.Put(r.rb)
		r.rb = nil
	}
}
