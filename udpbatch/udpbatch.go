package udpbatch

import (
	"net/netip"
	"os"
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
	ctlF  func(fd uintptr)      // b.recv for ReadNow, made once too
	ready bool                  // ctlF found datagrams (or an error)
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
	b.ctlF = func(fd uintptr) { b.ready = b.recv(fd) }
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

// ReadNow takes what is queued on rc without waiting, for an event loop
// that waits for the socket itself: 0 when nothing is.
func (b *Reader) ReadNow(rc syscall.RawConn) (int, error) {
	b.ready = false
	if err := rc.Control(b.ctlF); err != nil {
		return 0, err
	}
	if !b.ready {
		return 0, nil
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
	ctlF  func(fd uintptr) // send for WriteToNow
	sent  bool             // ctlF sent everything (or failed)
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
	w.ctlF = func(fd uintptr) { w.sent = w.send(fd) }
	return w
}

// Write sends bufs (at most len(w.msgs)) on rc, a connected socket.
func (w *Writer) Write(rc syscall.RawConn, bufs [][]byte) error {
	return w.WriteTo(rc, bufs, nil, 0)
}

// WriteTo sends bufs on rc to the address in name (namelen bytes of it);
// nil for a connected socket.
func (w *Writer) WriteTo(rc syscall.RawConn, bufs [][]byte, name *unix.RawSockaddrInet6, namelen uint32) error {
	w.prepare(bufs, name, namelen)
	if err := rc.Write(w.send); err != nil {
		return err
	}
	if w.errno != 0 {
		return w.errno
	}
	return nil
}

// WriteToNow is WriteTo without waiting, for an event loop: what the
// socket cannot take at once is not sent, and the error is EAGAIN (a
// full socket drops datagrams, as the kernel's own queues do).
func (w *Writer) WriteToNow(rc syscall.RawConn, bufs [][]byte, name *unix.RawSockaddrInet6, namelen uint32) error {
	w.prepare(bufs, name, namelen)
	w.sent = false
	if err := rc.Control(w.ctlF); err != nil {
		return err
	}
	if !w.sent {
		return unix.EAGAIN
	}
	if w.errno != 0 {
		return w.errno
	}
	return nil
}

// Unsent is how many datagrams the last write did not send.
func (w *Writer) Unsent() int { return len(w.todo) }

func (w *Writer) prepare(bufs [][]byte, name *unix.RawSockaddrInet6, namelen uint32) {
	for i, b := range bufs {
		w.iovs[i].Base = unsafe.SliceData(b) // nil for an empty datagram: length 0
		w.iovs[i].SetLen(len(b))
		w.msgs[i].hdr.Name, w.msgs[i].hdr.Namelen = (*byte)(unsafe.Pointer(name)), namelen
	}
	w.todo, w.errno = w.msgs[:len(bufs)], 0
}

// SendTo sends b to the address in sa (n bytes of it) on the socket fd,
// without waiting.
func SendTo(fd uintptr, b []byte, sa *unix.RawSockaddrInet6, n uint32) error {
	_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(sa)), uintptr(n))
	if e != 0 {
		return e
	}
	return nil
}

// Dial opens a non-blocking UDP socket connected to addr, outside the Go
// runtime's poller: for an event loop that waits for it itself.
func Dial(addr netip.AddrPort) (int, error) { return DialFrom(netip.AddrPort{}, addr, false) }

// DialFrom is Dial from the local address local (none: the kernel
// chooses), which with transparent need not be the host's (IP_TRANSPARENT,
// CAP_NET_ADMIN: a TPROXYed flow's socket answers from the address its
// client sent to).
func DialFrom(local, addr netip.AddrPort, transparent bool) (int, error) {
	var sa unix.RawSockaddrInet6
	family := unix.AF_INET6
	if addr.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, os.NewSyscallError("socket", e)
	}
	fail := func(call string, err error) (int, error) {
		unix.Close(int(fd))
		return -1, os.NewSyscallError(call, err)
	}
	if local.IsValid() {
		if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fail("setsockopt", err)
		}
		if transparent {
			level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
			if family == unix.AF_INET6 {
				level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
			}
			if err := unix.SetsockoptInt(int(fd), level, opt, 1); err != nil {
				return fail("setsockopt", err)
			}
		}
		n := Sockaddr(local, family, &sa)
		if _, _, e := unix.RawSyscall(unix.SYS_BIND, fd, uintptr(unsafe.Pointer(&sa)), uintptr(n)); e != 0 {
			return fail("bind", e)
		}
	}
	n := Sockaddr(addr, family, &sa)
	if _, _, e := unix.RawSyscall(unix.SYS_CONNECT, fd, uintptr(unsafe.Pointer(&sa)), uintptr(n)); e != 0 {
		return fail("connect", e)
	}
	return int(fd), nil
}

// RecvMsg reads one datagram and its control data from fd without
// waiting: n is -1 when nothing is queued.
func RecvMsg(fd uintptr, b, oob []byte) (n, oobn int, src netip.AddrPort, err error) {
	var name unix.RawSockaddrInet6
	var iov unix.Iovec
	iov.Base = unsafe.SliceData(b)
	iov.SetLen(len(b))
	var h unix.Msghdr
	h.Name = (*byte)(unsafe.Pointer(&name))
	h.Namelen = unix.SizeofSockaddrInet6
	h.Iov = &iov
	h.SetIovlen(1)
	if len(oob) > 0 {
		h.Control = unsafe.SliceData(oob)
		h.SetControllen(len(oob))
	}
	r, _, e := unix.RawSyscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&h)), unix.MSG_DONTWAIT)
	switch {
	case e == unix.EAGAIN || e == unix.EINTR:
		return -1, 0, netip.AddrPort{}, nil
	case e != 0:
		return 0, 0, netip.AddrPort{}, e
	}
	return int(r), int(h.Controllen), sockaddrPort(&name), nil
}

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
	pool  *Pool
	rb    *batch
	recv  func(fd uintptr) bool // made once per relay
	ctlF  func(fd uintptr)      // recv for NextNow
	ready bool
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
	r.ctlF = func(fd uintptr) { r.ready = r.recv(fd) }
	return r
}

// next waits for datagrams on from (its read deadline applies) and returns
// them, their total size, and the batch to send them with; done gives the
// batch back. On an error nothing is held.
func (r *Relay) Next(from syscall.RawConn) (bufs [][]byte, total int, out *Writer, err error) {
	return r.took(from.Read(r.recv))
}

// NextNow is Next without waiting, for an event loop: no datagrams and no
// error when nothing is queued.
func (r *Relay) NextNow(from syscall.RawConn) (bufs [][]byte, total int, out *Writer, err error) {
	r.ready = false
	err = from.Control(r.ctlF)
	if err == nil && !r.ready {
		return nil, 0, nil, nil // recv gave the batch back
	}
	return r.took(err)
}

// took is what the read into r.rb brought, or err.
func (r *Relay) took(err error) (bufs [][]byte, total int, out *Writer, _ error) {
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
