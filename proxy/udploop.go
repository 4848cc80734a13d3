package proxy

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/tetherlb/tether/tcploop"
	"github.com/tetherlb/tether/udpbatch"
	"golang.org/x/sys/unix"
)

// UDP services on the event loops (package tcploop's watches): a
// service has a socket for each loop (SO_REUSEPORT), and a flow's socket
// is read on the loop that read its client's first datagram, as nginx
// and HAProxy serve UDP and TCP from the same loops, instead of a
// goroutine for the service and one for each flow's replies. A datagram
// then costs no goroutine wake-up, and needs no processor besides the
// loops': with goroutines, a busy TCP loop on every processor held UDP
// back for milliseconds a datagram.
//
// Any goroutine may close a flow (a server going down, a reload, the
// flow cap of another loop): its socket is a rawSocket, safe to close
// while in use, and closing it takes it out of its loop's epoll set; the
// loop forgets its watch at its next tick. A loop closes its own flows
// when they have been idle (to its tick, a tenth of a second).

// udpRounds bounds the batches one readiness report reads from a socket,
// so that a flood on one does not hold the loop's other sockets back:
// what is left is reported again.
const udpRounds = 4

// listenUDP opens a UDP service's sockets on addr (the first one inherited
// from an upgraded process, if it handed one): with the event loops, one
// for each loop, with SO_REUSEPORT, so that the kernel spreads clients
// over the loops (by a hash of their addresses, so a client's datagrams
// stay on one), as nginx's reuseport does. Siblings the kernel refuses
// only cost the spread.
func (p *Proxy) listenUDP(addr string) ([]*net.UDPConn, error) {
	var pcs []*net.UDPConn
	if u := p.inherit.takeUDP(addr); u != nil {
		pcs = append(pcs, u)
	}
	n := 1
	var lc net.ListenConfig
	if p.loopCount >= 0 {
		n = p.loopsWanted()
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
				return err
			}
			return serr
		}
	}
	if len(pcs) == 0 {
		c, err := lc.ListenPacket(p.ctx, "udp", addr)
		if err != nil {
			return nil, err
		}
		pcs = append(pcs, c.(*net.UDPConn))
	}
	for len(pcs) < n {
		c, err := lc.ListenPacket(p.ctx, "udp", pcs[0].LocalAddr().String())
		if err != nil {
			p.log.Warn("a UDP socket for each event loop was refused; one loop reads the service", "listen", addr, "err", err)
			break
		}
		pcs = append(pcs, c.(*net.UDPConn))
	}
	return pcs, nil
}

// udpLoop reads one of a service's sockets on its loop.
type udpLoop struct {
	p     *Proxy
	svc   *service
	raw   *rawSocket
	u     *udpIn
	w     *tcploop.Watch // the loop's, set there
	watch *tcploop.Watch // the same, for the control loop
	start func(*flow) error
}

// serveUDPOnLoops serves svc's datagrams on the event loops, a socket a
// loop, and reports false when it cannot (the loops off, or out of
// descriptors): a goroutine serves its first socket then. On the loops
// the sockets leave the Go runtime's poller (each net.UDPConn is closed
// for a duplicate, raw): a poller that watched them woke its thread for
// every datagram, for nothing, a quarter of tether's CPU time under UDP
// load.
func (p *Proxy) serveUDPOnLoops(svc *service) bool {
	pcs := append([]*net.UDPConn{svc.pc}, svc.morePC...)
	svc.morePC = nil
	ok := p.loopCount >= 0 && p.watchUDP(svc, pcs)
	if !ok {
		for _, pc := range pcs[1:] {
			pc.Close() // the kernel sends a closed sibling nothing
		}
		return false
	}
	for _, pc := range pcs {
		pc.Close() // the runtime's poller forgets it; the duplicate keeps it open
	}
	svc.pc, svc.rc = nil, svc.udp[0].raw
	return true
}

// watchUDP watches a duplicate of each of pcs on a loop of its own.
func (p *Proxy) watchUDP(svc *service, pcs []*net.UDPConn) bool {
	ls, err := p.tcpLoops()
	for i := 0; err == nil && i < len(pcs) && i < ls.Len(); i++ {
		fd := -1
		rc, _ := pcs[i].SyscallConn()
		if cerr := rc.Control(func(x uintptr) { fd, err = unix.FcntlInt(x, unix.F_DUPFD_CLOEXEC, 0) }); cerr != nil {
			err = cerr
		}
		if err != nil {
			break
		}
		ul := &udpLoop{p: p, svc: svc, raw: &rawSocket{fd: fd}, u: newUDPIn(true)}
		ul.start = ul.startFlow
		svc.udp = append(svc.udp, ul) // before the loop reads it
		if ul.watch, err = ls.Watch(i, fd, ul, false); err != nil {
			svc.udp = svc.udp[:len(svc.udp)-1]
			ul.raw.Close()
		}
	}
	if err != nil {
		p.log.Error("the event loops cannot read a UDP service; a goroutine serves it", "listen", svc.pc.LocalAddr(), "err", err)
		p.unwatchUDP(svc)
		svc.udp = nil // not published yet
		return false
	}
	return true
}

// unwatchUDP takes svc's sockets out of their loops and closes them. It
// leaves svc.udp as it is: the status may read it (a closed socket's
// drop count reads as none).
func (p *Proxy) unwatchUDP(svc *service) {
	for _, ul := range svc.udp {
		ul.watch.Do(ul.watch.Stop) // false once the loops have stopped: their sets went with them
		ul.raw.Close()
	}
}

// Readable reads the service's datagrams, udpRounds batches at most.
func (ul *udpLoop) Readable(w *tcploop.Watch) {
	ul.w = w
	for range udpRounds {
		n, err := ul.u.in.ReadNow(ul.raw)
		if err != nil || n == 0 {
			return // an error of the socket's (a stop takes it out of the loop before it closes it)
		}
		ul.p.datagrams(ul.svc, ul.u, n, w.Now(), &ul.svc.udpWG, ul.start)
		if n < udpBatch {
			return
		}
	}
}

func (ul *udpLoop) Tick(*tcploop.Watch, int64) {}

// startFlow watches a new flow's socket on the loop that read its first
// datagram: the kernel sends its client's next ones to the same socket.
func (ul *udpLoop) startFlow(f *flow) error {
	fl := &flowLoop{p: ul.p, svc: ul.svc, f: f, rel: udpbatch.NewRelay(ul.p.replies), idle: int64(f.st.cfg.Limits.IdleTimeout.D())}
	fl.sent = func(total int) {
		f.srv.bytesOut.Add(uint64(total))
		f.Out.Add(int64(total))
	}
	if _, err := ul.w.Watch(f.raw.fd, fl, true); err != nil {
		return err
	}
	f.out = ul.raw
	return nil
}

// flowLoop relays a flow's replies on its loop and ends the flow once it
// has been idle for the service's idle timeout. A flow closed elsewhere
// (a server down, a reload, a stop, the flow cap) is forgotten here.
type flowLoop struct {
	p    *Proxy
	svc  *service
	f    *flow
	rel  *udpbatch.Relay
	idle int64 // ns
	sent func(total int)
}

// Readable sends what the server answered to the client, through the
// service's socket.
func (fl *flowLoop) Readable(w *tcploop.Watch) {
	f := fl.f
	relayNow(w, fl.rel, f.rc, f.out, &f.dst, f.dstLen, &f.closed, &f.last, f.st.ev, fl.sent)
}

// relayNow moves what is queued on from to to (name, namelen: the
// destination, when to is not connected), udpRounds batches at most, on
// a loop; sent counts a batch's bytes once they are sent. A flow closed
// elsewhere (closed) has its watch forgotten.
func relayNow(w *tcploop.Watch, rel *udpbatch.Relay, from, to syscall.RawConn, name *unix.RawSockaddrInet6, namelen uint32, closed *atomic.Bool, last *atomic.Int64, ev *events, sent func(total int)) {
	for range udpRounds {
		bufs, total, out, err := rel.NextNow(from)
		if err != nil || bufs == nil {
			if closed.Load() {
				w.Forget() // its close took it out of the loop's set
			}
			return // nothing, or an ICMP refusal and the like: the server may come back
		}
		last.Store(w.Now())
		switch err := out.WriteToNow(to, bufs, name, namelen); err {
		case nil:
			sent(total)
		case unix.EAGAIN:
			ev.addN(evUDPDropped, uint64(out.Unsent()))
		}
		rel.Done()
		if len(bufs) < udpBatch {
			return
		}
	}
}

// Tick ends the flow once it has been idle for the idle timeout, and
// forgets a flow closed elsewhere.
func (fl *flowLoop) Tick(w *tcploop.Watch, now int64) {
	f := fl.f
	if !f.closed.Load() && now-f.last.Load() >= fl.idle {
		fl.svc.flows.Remove(f.client, f)
		fl.p.closeFlow(f, "idle timeout")
	}
	if f.closed.Load() {
		w.Forget() // its close took it out of the loop's set
	}
}

// closeUDP stops a UDP service: its sockets close, and its flows with
// them; done is closed once nothing of it runs.
func (p *Proxy) closeUDP(s *service) {
	if s.flows == nil {
		return // not a UDP service
	}
	s.udpOnce.Do(func() {
		if s.udp == nil {
			s.pc.Close() // its goroutine closes its flows, then done
			return
		}
		p.unwatchUDP(s)
		p.closeFlows(s)
		s.udpWG.Wait() // one-packet datagrams' goroutines
		close(s.done)
	})
}

// dialRaw opens a flow's socket to addr, outside the runtime's poller.
func (p *Proxy) dialRaw(addr netip.AddrPort) (*rawSocket, error) {
	fd := -1
	err := p.inNamespace(func() (err error) {
		fd, err = udpbatch.Dial(addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &rawSocket{fd: fd}, nil
}

// rawSocket is a socket the Go runtime's poller does not watch (an event
// loop does), as a syscall.RawConn: Read and Write do not wait, they
// report EAGAIN. Like Go's own sockets it may be closed while another
// goroutine uses it: the close waits for a use under way, and a later use
// fails, so that the descriptor's number, reused, is never written to.
type rawSocket struct {
	fd     int
	mu     sync.RWMutex // shared by users; Close takes it only to mark it closed
	closed bool
}

func (s *rawSocket) SyscallConn() (syscall.RawConn, error) { return s, nil }

func (s *rawSocket) Control(f func(fd uintptr)) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return net.ErrClosed
	}
	f(uintptr(s.fd))
	return nil
}

func (s *rawSocket) Read(f func(fd uintptr) bool) error { return s.once(f) }

func (s *rawSocket) Write(f func(fd uintptr) bool) error { return s.once(f) }

func (s *rawSocket) once(f func(fd uintptr) bool) error {
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
func (s *rawSocket) Close() error {
	s.mu.Lock()
	was := s.closed
	s.closed = true
	s.mu.Unlock()
	if was {
		return net.ErrClosed
	}
	return unix.Close(s.fd)
}
