package proxy

import (
	"net"
	"net/netip"
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

// batchReader reads up to len(bufs) datagrams with one recvmmsg(2), and
// their sources, without allocating. x/net's ReadBatch would allocate a
// net.Addr per datagram.
type batchReader struct {
	rc    syscall.RawConn
	msgs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	bufs  [][]byte
	got   int
	errno syscall.Errno
	recv  func(fd uintptr) bool // made once: a closure per read would allocate
}

func newBatchReader(c *net.UDPConn, n, size int) (*batchReader, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	b := &batchReader{rc: rc, msgs: make([]mmsghdr, n), iovs: make([]unix.Iovec, n), names: make([]unix.RawSockaddrInet6, n), bufs: make([][]byte, n)}
	for i := range n {
		b.bufs[i] = make([]byte, size)
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(size)
		b.msgs[i].hdr.Iov = &b.iovs[i]
		b.msgs[i].hdr.SetIovlen(1)
		b.msgs[i].hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
	}
	b.recv = func(fd uintptr) bool {
		for i := range b.msgs {
			b.msgs[i].hdr.Namelen = unix.SizeofSockaddrInet6
			b.msgs[i].hdr.Flags = 0
		}
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.msgs[0])), uintptr(len(b.msgs)), unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EAGAIN || e == unix.EINTR {
			return false // wait for the socket to be readable
		}
		b.got, b.errno = int(r), e
		return true
	}
	return b, nil
}

// read waits for datagrams and returns how many it took (at least one).
func (b *batchReader) read() (int, error) {
	if err := b.rc.Read(b.recv); err != nil {
		return 0, err // net.ErrClosed once the socket is closed
	}
	if b.errno != 0 {
		return 0, b.errno
	}
	return b.got, nil
}

// msg is the i-th datagram of the last read and its source. A truncated
// datagram (larger than the buffers) is reported as not ok.
func (b *batchReader) msg(i int) (data []byte, src netip.AddrPort, ok bool) {
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

// batchWriter sends several datagrams on a connected socket with one
// sendmmsg(2).
type batchWriter struct {
	msgs  []mmsghdr
	iovs  []unix.Iovec
	todo  []mmsghdr // the part of msgs not sent yet
	errno syscall.Errno
	send  func(fd uintptr) bool
}

func newBatchWriter(n int) *batchWriter {
	w := &batchWriter{msgs: make([]mmsghdr, n), iovs: make([]unix.Iovec, n)}
	for i := range n {
		w.msgs[i].hdr.Iov = &w.iovs[i]
		w.msgs[i].hdr.SetIovlen(1)
	}
	w.send = func(fd uintptr) bool {
		for len(w.todo) > 0 {
			r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.todo[0])), uintptr(len(w.todo)), unix.MSG_DONTWAIT, 0, 0)
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

// write sends bufs (at most len(w.msgs)) on rc, a connected socket.
func (w *batchWriter) write(rc syscall.RawConn, bufs [][]byte) error {
	for i, b := range bufs {
		w.iovs[i].Base = unsafe.SliceData(b) // nil for an empty datagram: length 0
		w.iovs[i].SetLen(len(b))
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
