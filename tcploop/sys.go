package tcploop

import (
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loops' system calls, made raw (without the runtime's entersyscall
// and exitsyscall): every one is on a non-blocking descriptor and returns
// at once, so the processor need not be handed off around it. Through the
// runtime's wrappers, a loopback connect or close that ran past the
// runtime monitor's 20 µs tick had its processor retaken and handed to
// another thread, and the monitor, never idle, woke 50 000 times a second:
// an eighth of the process's CPU time on this project's VM.

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func rawRead(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawSend writes b to a socket; with more, the kernel holds a segment
// that is not full for what follows (MSG_MORE): the FIN of a shutdown
// made next rides in it.
func rawSend(fd int, b []byte, more bool) (int, error) {
	flags := unix.MSG_NOSIGNAL
	if more {
		flags |= unix.MSG_MORE
	}
	n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(flags), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func rawClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

func rawShutdown(fd, how int) {
	unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
}

// rawSplice moves up to n bytes between descriptors, non-blocking; more
// as for rawSend.
func rawSplice(in, out, n int, more bool) (int, error) {
	flags := unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK
	if more {
		flags |= unix.SPLICE_F_MORE
	}
	m, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), uintptr(flags))
	if e != 0 {
		return 0, e
	}
	return int(m), nil
}

// rawEpollWait takes ep's ready events, waiting up to ms milliseconds (0:
// a poll), the thread and its processor held: only for waits short
// enough that holding them costs less than handing them off.
func rawEpollWait(ep int, events []unix.EpollEvent, ms int) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(ms), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func rawEpollCtl(ep, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(ep), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return errnoErr(e)
}

func rawSetsockoptInt(fd, level, opt, v int) error {
	v32 := int32(v)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v32)), 4, 0)
	return errnoErr(e)
}

// rawAccept4 accepts a connection, non-blocking and close-on-exec, and
// returns its peer's address.
func rawAccept4(fd int) (int, netip.AddrPort, error) {
	var sa unix.RawSockaddrAny
	l := uint32(unix.SizeofSockaddrAny)
	nfd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, netip.AddrPort{}, e
	}
	return int(nfd), rawAddrPort(&sa), nil
}

// rawAddrPort reads an IPv4 or IPv6 socket address.
func rawAddrPort(sa *unix.RawSockaddrAny) netip.AddrPort {
	switch sa.Addr.Family {
	case unix.AF_INET:
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&a.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&a.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(p[0])<<8|uint16(p[1]))
	}
	return netip.AddrPort{}
}

// Dial opens a non-blocking TCP socket and starts its connect to addr: the
// Server of a Decision. Errors are *os.SyscallError, so that errors.Is
// finds the errno (a host out of descriptors, ports or buffers).
func Dial(addr netip.AddrPort) (int, error) {
	var sa4 unix.RawSockaddrInet4
	var sa6 unix.RawSockaddrInet6
	family, ptr, size := unix.AF_INET6, unsafe.Pointer(&sa6), uintptr(unix.SizeofSockaddrInet6)
	port := [2]byte{byte(addr.Port() >> 8), byte(addr.Port())}
	if addr.Addr().Is4() {
		sa4.Family, sa4.Addr = unix.AF_INET, addr.Addr().As4()
		*(*[2]byte)(unsafe.Pointer(&sa4.Port)) = port
		family, ptr, size = unix.AF_INET, unsafe.Pointer(&sa4), unix.SizeofSockaddrInet4
	} else {
		sa6.Family, sa6.Addr = unix.AF_INET6, addr.Addr().As16()
		*(*[2]byte)(unsafe.Pointer(&sa6.Port)) = port
	}
	fd, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, os.NewSyscallError("socket", e)
	}
	rawSetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) // small messages go at once, as Go's net does
	if _, _, e := unix.RawSyscall(unix.SYS_CONNECT, fd, uintptr(ptr), size); e != 0 && e != unix.EINPROGRESS {
		rawClose(int(fd))
		return -1, os.NewSyscallError("connect", e)
	}
	return int(fd), nil
}
