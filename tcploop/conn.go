package tcploop

import (
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/tetherlb/tether/tcprelay"
	"golang.org/x/sys/unix"
)

// Conn is one client connection and its server connection, on one loop.
// A Service may keep its own state in Data, and must not keep the Conn
// after Done.
type Conn struct {
	Data any

	slot int32
	gen  uint32
	src  netip.AddrPort
	svc  Service
	cfd  int // the client's socket
	sfd  int // the server's socket, -1 before one
	in   int64
	out  int64
	last int64 // unix nanos of the last byte moved
	idle int64
	up   half // client to server
	down half // server to client
	cs   sock // the client's socket, as far as the loop knows
	ss   sock // the server's
	live bool
	// connecting and connectBy: the connect in flight and its deadline.
	connecting bool
	connectBy  int64
}

// sock is what a socket's edge-triggered events told the loop.
type sock struct {
	readable bool
	writable bool
	hup      bool // the peer shut down its side: read until EOF, not until a short read
	fin      bool // the peer's FIN is in (RDHUP, no error): a short read is its last
}

// saw adds event ev.
func (s *sock) saw(ev uint32) {
	s.readable = s.readable || ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
	s.writable = s.writable || ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0
	s.hup = s.hup || ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0
	s.fin = s.fin || ev&(unix.EPOLLRDHUP|unix.EPOLLERR) == unix.EPOLLRDHUP
}

// half is one direction's bytes in flight: in a buffer, or in a pipe once
// the direction carries bulk.
type half struct {
	buf     []byte
	off, n  int // buf[off:n] waits for the destination
	pipe    *tcprelay.Pipe
	eof     bool // the source ended
	done    bool // eof, everything passed on, the destination shut down
	wasFull bool // the last read filled the buffer: bulk
}

// Src is the client's address, from accept.
func (c *Conn) Src() netip.AddrPort { return c.src }

// Local is the address the client connected to (for a transparent
// connection, its original destination).
func (c *Conn) Local() (netip.AddrPort, error) {
	sa, err := syscall.Getsockname(c.cfd) // syscall's: see accept
	if err != nil {
		return netip.AddrPort{}, os.NewSyscallError("getsockname", err)
	}
	return addrPort(sa), nil
}

func addrPort(sa syscall.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *syscall.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// serve asks svc about a connection accepted on fd and starts it.
func (l *loop) serve(svc Service, fd int, src netip.AddrPort) {
	c := l.newConn(svc, fd, src)
	d := svc.Accept(c)
	switch {
	case d.Handoff != nil:
		l.freeConn(c)
		d.Handoff(fd)
		return
	case d.Server < 0:
		l.freeConn(c)
		closeSocket(fd, d.Reset)
		return
	}
	c.idle = int64(d.Idle) // TCP_NODELAY came from the listener (setNoDelay)
	if len(d.Header) > 0 {
		c.up.buf = l.getBuf()
		c.up.n = copy(c.up.buf, d.Header)
	} else {
		l.readEarly(c)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: c.slot << 1, Pad: int32(c.gen)}
	if err := rawEpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		rawClose(d.Server)
		l.end(c, os.NewSyscallError("epoll_ctl", err))
		return
	}
	l.connect(c, d)
}

// readEarly reads what the client has sent by the time it is accepted,
// before the client's socket is registered: a short read leaves nothing
// for the registration to report, so nothing is read twice.
func (l *loop) readEarly(c *Conn) {
	h := &c.up
	h.buf = l.getBuf()
	n, err := rawRead(c.cfd, h.buf)
	if err != nil || n == 0 {
		l.putBuf(h) // EAGAIN, EOF or an error: the registration reports it
		return
	}
	h.off, h.n, h.wasFull = 0, n, n == len(h.buf)
	c.in += int64(n)
	c.last = l.now
}

// connect registers the Decision's connecting server socket. What the
// client sent already goes at once: on a host's own network the connect
// is done when it returns, so the bytes follow the connection without
// waiting for the next epoll_wait (a send that would block leaves them
// for the connect's EPOLLOUT; any other error is the connect's).
func (l *loop) connect(c *Conn, d Decision) {
	c.sfd, c.connecting = d.Server, true
	c.connectBy = l.now + int64(d.ConnectTimeout)
	if d.ConnectTimeout <= 0 {
		c.connectBy = l.now + int64(time.Minute)
	}
	c.ss = sock{}
	if h := &c.up; h.off < h.n {
		m, err := rawSend(c.sfd, h.buf[h.off:h.n], false)
		switch err {
		case nil:
			c.connecting = false
			c.svc.Connected(c)
			if h.off += m; h.off == h.n {
				l.sent(h)
			}
		case unix.EAGAIN:
		default:
			l.connectFailed(c, os.NewSyscallError("connect", err))
			return
		}
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: c.slot<<1 | 1, Pad: int32(c.gen)}
	if err := rawEpollCtl(l.ep, unix.EPOLL_CTL_ADD, c.sfd, &ev); err != nil {
		l.end(c, os.NewSyscallError("epoll_ctl", err))
	}
}

// connectFailed closes the server socket and asks the Service for the next.
func (l *loop) connectFailed(c *Conn, err error) {
	rawClose(c.sfd)
	c.sfd, c.connecting = -1, false
	d := c.svc.Failed(c, err)
	if d.Server < 0 {
		if d.Reset {
			resetOnClose(c.cfd)
		}
		l.end(c, err)
		return
	}
	l.connect(c, d)
}

// event takes one epoll report for c's client (server false) or server
// socket, and moves what can be moved.
func (l *loop) event(c *Conn, server bool, ev uint32) {
	if !server {
		c.cs.saw(ev)
	} else {
		if c.connecting {
			if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
				e, err := unix.GetsockoptInt(c.sfd, unix.SOL_SOCKET, unix.SO_ERROR)
				switch {
				case err != nil:
					l.connectFailed(c, os.NewSyscallError("getsockopt", err))
					return
				case e != 0:
					l.connectFailed(c, os.NewSyscallError("connect", unix.Errno(e)))
					return
				case ev&unix.EPOLLOUT == 0:
					l.connectFailed(c, os.NewSyscallError("connect", unix.ECONNRESET))
					return
				}
			}
			if ev&unix.EPOLLOUT == 0 {
				return
			}
			c.connecting = false
			c.last = l.now
			c.svc.Connected(c)
		}
		c.ss.saw(ev)
	}
	l.pump(c)
}

// pump moves both directions as far as the sockets let it, and ends the
// connection when both are done or one failed.
func (l *loop) pump(c *Conn) {
	if c.connecting || !c.live {
		return
	}
	err := l.move(c, &c.up, &c.down, c.cfd, c.sfd, &c.cs, &c.ss, &c.in)
	if err == nil {
		err = l.move(c, &c.down, &c.up, c.sfd, c.cfd, &c.ss, &c.cs, &c.out)
	}
	if err != nil || c.up.done && c.down.done {
		l.end(c, err)
	}
}

// move passes h's bytes from src to dst until one of them would block, the
// source ends, or a call fails. A short read clears from.readable: the
// edge-triggered registration reports the next arrival, unless the peer
// has shut down (hup), when the loop reads on to the EOF.
//
// Once the source has shut down, what is written holds back a segment that
// is not full (MSG_MORE) unless the destination will not be shut down
// after it: the shutdown that follows the EOF sends the FIN in the last
// data segment, as HAProxy does, a packet less each way for a
// request/response that ends the connection. Once the source's FIN is in
// (fin: all its bytes are queued before it), a read that does not fill the
// buffer took the last of them: the EOF is known without reading it.
func (l *loop) move(c *Conn, h, other *half, src, dst int, from, to *sock, count *int64) error {
	more := from.hup && !other.done
	for !h.done {
		switch {
		case h.pipe != nil && h.pipe.Data > 0:
			if !to.writable {
				return nil
			}
			m, err := rawSplice(h.pipe.R, dst, h.pipe.Data, more)
			if err == unix.EAGAIN {
				to.writable = false
				return nil
			}
			if err != nil {
				return os.NewSyscallError("splice", err)
			}
			h.pipe.Data -= m
			c.last = l.now
		case h.off < h.n:
			if !to.writable {
				return nil
			}
			m, err := rawSend(dst, h.buf[h.off:h.n], more)
			if err == unix.EAGAIN {
				to.writable = false
				return nil
			}
			if err != nil {
				return os.NewSyscallError("send", err)
			}
			h.off += m
			c.last = l.now
			if h.off < h.n {
				to.writable = false // the socket's buffer is full: its edge reports room
				return nil
			}
			l.sent(h)
		case h.eof:
			if h.pipe != nil {
				l.relay.ReturnPipe(h.pipe)
				h.pipe = nil
			}
			h.done = true
			if !other.done {
				rawShutdown(dst, unix.SHUT_WR) // the half-close passes on
			}
		case !from.readable:
			return nil
		case h.pipe != nil:
			n, err := rawSplice(src, h.pipe.W, spliceChunk, false)
			if err == unix.EAGAIN {
				from.readable = false
				return nil
			}
			if err != nil {
				return os.NewSyscallError("splice", err)
			}
			if n == 0 {
				h.eof = true
				continue
			}
			if n < spliceChunk && !from.hup {
				from.readable = false
			}
			h.pipe.Data += n
			*count += int64(n)
			c.last = l.now
		default:
			if h.buf == nil {
				h.buf = l.getBuf()
			}
			n, err := rawRead(src, h.buf)
			if err == unix.EAGAIN {
				from.readable = false
				l.putBuf(h)
				return nil
			}
			if err != nil {
				return os.NewSyscallError("read", err)
			}
			if n == 0 {
				h.eof = true
				l.putBuf(h)
				continue
			}
			switch {
			case n == len(h.buf):
			case from.fin:
				h.eof = true
			case !from.hup:
				from.readable = false
			}
			h.off, h.n, h.wasFull = 0, n, n == len(h.buf)
			*count += int64(n)
			c.last = l.now
		}
	}
	return nil
}

// sent gives back h's buffer once its bytes are all sent, and lends a
// direction whose last read filled the buffer a splice pipe: bulk.
func (l *loop) sent(h *half) {
	bulk := h.wasFull
	l.putBuf(h)
	if bulk && !h.eof {
		h.pipe = l.relay.LendPipe() // nil when none is free: on through the buffer
	}
}

// end closes both sockets, gives back what the connection borrowed and
// tells the Service.
func (l *loop) end(c *Conn, err error) {
	if !c.live {
		return
	}
	rawClose(c.cfd)
	if c.sfd >= 0 {
		rawClose(c.sfd)
	}
	for _, h := range []*half{&c.up, &c.down} {
		l.putBuf(h)
		if h.pipe != nil {
			l.relay.ReturnPipe(h.pipe)
		}
	}
	c.svc.Done(c, c.in, c.out, err)
	l.freeConn(c)
}

// closeSocket closes an accepted socket, with a reset when reset.
func closeSocket(fd int, reset bool) {
	if reset {
		resetOnClose(fd)
	}
	rawClose(fd)
}

// resetOnClose makes fd's close send a reset (SO_LINGER with no time).
func resetOnClose(fd int) {
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
}

// copyBuf is a direction's buffer (tcprelay's size: a read that fills it
// means bulk), spliceChunk the most one splice moves.
const (
	copyBuf     = 16 << 10
	spliceChunk = 1 << 20
	idleBufs    = 64 // buffers a loop keeps for reuse
)

func (l *loop) getBuf() []byte {
	if n := len(l.bufs); n > 0 {
		b := l.bufs[n-1]
		l.bufs = l.bufs[:n-1]
		return b
	}
	return make([]byte, copyBuf)
}

// putBuf takes h's buffer back, if it holds one.
func (l *loop) putBuf(h *half) {
	if h.buf != nil && len(l.bufs) < idleBufs {
		l.bufs = append(l.bufs, h.buf)
	}
	h.buf, h.off, h.n, h.wasFull = nil, 0, 0, false
}

// newConn takes a slot for a connection on fd from src.
func (l *loop) newConn(svc Service, fd int, src netip.AddrPort) *Conn {
	var slot int32
	if n := len(l.free); n > 0 {
		slot = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		slot = int32(len(l.slots))
		l.slots = append(l.slots, nil)
	}
	c := &Conn{slot: slot, svc: svc, cfd: fd, sfd: -1, src: src, live: true, last: l.now}
	l.gen = (l.gen + 1) & 0x7fffffff // Pad is an int32, and negative ones are not connections'
	c.gen = l.gen
	l.slots[slot] = c
	l.open.Add(1)
	return c
}

func (l *loop) freeConn(c *Conn) {
	c.live = false
	c.svc = nil
	c.Data = nil
	l.slots[c.slot] = nil
	l.free = append(l.free, c.slot)
	l.open.Add(-1)
}
