package udpbatch

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Socket is a non-blocking socket outside the Go runtime's poller, for an
// event loop that waits for it itself (a poller that watched it would
// wake its thread for every datagram). As a syscall.RawConn its Read and
// Write do not wait: when there is nothing to read, or no room to send,
// they report EAGAIN, so Reader, Writer and Relay on a Socket never block.
// Like Go's own sockets it may be closed while another goroutine uses it:
// the close waits for a use under way, and a later use fails, so that the
// descriptor's number, reused, is never read or written.
type Socket struct {
	fd     int
	mu     sync.RWMutex // shared by users; Close takes it only to mark it closed
	closed bool
}

// NewSocket takes fd, non-blocking, as a Socket.
func NewSocket(fd int) *Socket { return &Socket{fd: fd} }

// Fd is the socket's descriptor, for an event loop to watch.
func (s *Socket) Fd() int { return s.fd }

func (s *Socket) SyscallConn() (syscall.RawConn, error) { return s, nil }

func (s *Socket) Control(f func(fd uintptr)) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return net.ErrClosed
	}
	f(uintptr(s.fd))
	return nil
}

func (s *Socket) Read(f func(fd uintptr) bool) error { return s.once(f) }

func (s *Socket) Write(f func(fd uintptr) bool) error { return s.once(f) }

func (s *Socket) once(f func(fd uintptr) bool) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return net.ErrClosed
	}
	if !f(uintptr(s.fd)) {
		return unix.EAGAIN
	}
	return nil
}

// Close closes the socket once no use of it is under way.
func (s *Socket) Close() error {
	s.mu.Lock()
	was := s.closed
	s.closed = true
	s.mu.Unlock()
	if was {
		return net.ErrClosed
	}
	return unix.Close(s.fd)
}

// Dial opens a Socket connected to addr.
func Dial(addr netip.AddrPort) (*Socket, error) { return DialFrom(netip.AddrPort{}, addr, false) }

// DialFrom is Dial from the local address local (none: the kernel
// chooses), which with transparent need not be the host's (IP_TRANSPARENT,
// CAP_NET_ADMIN: a TPROXYed flow's socket answers from the address its
// client sent to).
func DialFrom(local, addr netip.AddrPort, transparent bool) (*Socket, error) {
	var sa unix.RawSockaddrInet6
	family := unix.AF_INET6
	if addr.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return nil, os.NewSyscallError("socket", e)
	}
	fail := func(call string, err error) (*Socket, error) {
		unix.Close(int(fd))
		return nil, os.NewSyscallError(call, err)
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
	return NewSocket(int(fd)), nil
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
