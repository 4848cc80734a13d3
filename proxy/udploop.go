package proxy

import (
	"net"
	"net/netip"
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
// The sockets are udpbatch.Sockets, outside the Go runtime's poller: one
// that watched them woke its thread for every datagram, for nothing, a
// quarter of tether's CPU time under UDP load. On them the batch calls do
// not wait, and any goroutine may close a flow (a server going down, a
// reload, the flow cap of another loop): closing its socket takes it out
// of its loop's epoll set, and the loop forgets its watch at its next
// tick. A loop closes its own flows when they have been idle (to its
// tick, a tenth of a second).

// udpRounds bounds the batches one readiness report reads from a socket,
// so that a flood on one does not hold the loop's other sockets back:
// what is left is reported again.
const udpRounds = 4

// listenUDP opens a UDP service's sockets on addr: with the event loops,
// one for each loop, with SO_REUSEPORT, so that the kernel spreads
// clients over the loops (by a hash of their addresses, so a client's
// datagrams stay on one), as nginx's reuseport does.
func (p *Proxy) listenUDP(addr string) ([]*net.UDPConn, error) {
	var lc net.ListenConfig
	if p.loopCount >= 0 {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
				return err
			}
			return serr
		}
	}
	return p.listenUDPGroup(lc, "udp", addr)
}

// listenUDPGroup opens a socket on addr with lc (the first one inherited
// from an upgraded process, if it handed one) and, with the event loops,
// a sibling for each further loop (lc's Control sets SO_REUSEPORT then).
// Siblings the kernel refuses only cost the spread over the loops.
func (p *Proxy) listenUDPGroup(lc net.ListenConfig, network, addr string) ([]*net.UDPConn, error) {
	var pcs []*net.UDPConn
	if u := p.inherit.takeUDP(addr); u != nil {
		pcs = append(pcs, u)
	} else {
		c, err := lc.ListenPacket(p.ctx, network, addr)
		if err != nil {
			return nil, err
		}
		pcs = append(pcs, c.(*net.UDPConn))
	}
	n := 1
	if p.loopCount >= 0 {
		n = p.loopsWanted()
	}
	for len(pcs) < n {
		c, err := lc.ListenPacket(p.ctx, network, pcs[0].LocalAddr().String()) // its port, when addr's was 0
		if err != nil {
			p.log.Warn("a UDP socket for each event loop was refused; fewer loops read it", "listen", addr, "err", err)
			break
		}
		pcs = append(pcs, c.(*net.UDPConn))
	}
	return pcs, nil
}

// loopSocket is a listening socket a loop reads: a duplicate of a
// net.UDPConn's, outside the runtime's poller. Readers embed it.
type loopSocket struct {
	raw   *udpbatch.Socket
	watch *tcploop.Watch // for the control loop
}

func (s *loopSocket) socket() *loopSocket { return s }

// close takes the socket out of its loop and closes it.
func (s *loopSocket) close() {
	s.watch.Do(s.watch.Stop) // false once the loops have stopped: their sets went with them
	s.raw.Close()
}

// watchDups watches a duplicate of each of pcs on loop loopOf(i), read by
// the Watcher mk(i) makes for it (with its loopSocket's raw set), and closes
// pcs, which the runtime's poller then forgets. All or none: on an error
// the duplicates watched are closed again and pcs stay open.
func watchDups[W interface {
	tcploop.Watcher
	socket() *loopSocket
}](p *Proxy, pcs []*net.UDPConn, loopOf func(i int) int, mk func(i int, raw *udpbatch.Socket) W) ([]W, error) {
	ls, err := p.tcpLoops()
	if err != nil {
		return nil, err
	}
	var ws []W
	for i, pc := range pcs {
		fd, err := dupSocket(pc)
		if err != nil {
			closeAll(ws)
			return nil, err
		}
		raw := udpbatch.NewSocket(fd)
		w := mk(i, raw)
		watch, err := ls.Watch(loopOf(i), fd, w, false)
		if err != nil {
			raw.Close()
			closeAll(ws)
			return nil, err
		}
		w.socket().watch = watch // the loop reads only raw
		ws = append(ws, w)
	}
	for _, pc := range pcs {
		pc.Close() // the duplicate keeps the socket open
	}
	return ws, nil
}

func closeAll[W interface{ socket() *loopSocket }](ws []W) {
	for _, w := range ws {
		w.socket().close()
	}
}

// udpLoop reads one of a service's sockets on its loop.
type udpLoop struct {
	loopSocket
	p   *Proxy
	svc *service
	u   *udpIn
	w   *tcploop.Watch // the loop's, set there
}

// serveUDPOnLoops serves svc's datagrams on the event loops, a socket a
// loop, and reports false when it cannot (the loops off, or out of
// descriptors): a goroutine serves its first socket then.
func (p *Proxy) serveUDPOnLoops(svc *service) bool {
	pcs := append([]*net.UDPConn{svc.pc}, svc.morePC...)
	svc.morePC = nil
	if p.loopCount >= 0 {
		uls, err := watchDups(p, pcs, func(i int) int { return i }, func(_ int, raw *udpbatch.Socket) *udpLoop {
			ul := &udpLoop{loopSocket: loopSocket{raw: raw}, p: p, svc: svc}
			ul.u = newUDPIn(ul.open)
			return ul
		})
		if err == nil {
			svc.pc, svc.rc, svc.udp = nil, uls[0].raw, uls
			return true
		}
		p.log.Error("the event loops cannot read a UDP service; a goroutine serves it", "listen", svc.pc.LocalAddr(), "err", err)
	}
	for _, pc := range pcs[1:] {
		pc.Close() // the kernel sends a closed sibling nothing
	}
	return false
}

// Readable reads the service's datagrams, udpRounds batches at most.
func (ul *udpLoop) Readable(w *tcploop.Watch) {
	ul.w = w
	for range udpRounds {
		n, err := ul.u.in.Read(ul.raw)
		if err != nil {
			return // EAGAIN: nothing more; or an error of the socket's (a stop takes it out of the loop before it closes it)
		}
		ul.p.datagrams(ul.svc, ul.u, n, w.Now(), &ul.svc.udpWG)
		if n < udpBatch {
			return
		}
	}
}

func (ul *udpLoop) Tick(*tcploop.Watch, int64) {}

// open gives a new flow a socket to its server, watched on the loop that
// read its first datagram: the kernel sends its client's next ones to the
// same socket.
func (ul *udpLoop) open(f *flow) error {
	s, err := ul.p.dialSocket(f.srv.Addr)
	if err != nil {
		return err
	}
	fl := &flowLoop{p: ul.p, svc: ul.svc, f: f, rel: udpbatch.NewRelay(ul.p.replies), idle: int64(f.st.cfg.Limits.IdleTimeout.D())}
	fl.sent = func(total int) {
		f.srv.bytesOut.Add(uint64(total))
		f.Out.Add(int64(total))
	}
	if _, err := ul.w.Watch(s.Fd(), fl, true); err != nil {
		s.Close()
		return err
	}
	f.sock, f.rc, f.out = s, s, ul.raw
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
// a loop (from and to are Sockets: nothing waits); sent counts a batch's
// bytes once they are sent. A flow closed elsewhere (closed) has its
// watch forgotten.
func relayNow(w *tcploop.Watch, rel *udpbatch.Relay, from, to syscall.RawConn, name *unix.RawSockaddrInet6, namelen uint32, closed *atomic.Bool, last *atomic.Int64, ev *events, sent func(total int)) {
	for range udpRounds {
		bufs, total, out, err := rel.Next(from)
		if err != nil {
			if closed.Load() {
				w.Forget() // its close took it out of the loop's set
			}
			return // EAGAIN: nothing more; or an ICMP refusal and the like: the server may come back
		}
		last.Store(w.Now())
		switch err := out.WriteTo(to, bufs, name, namelen); err {
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
// them; done is closed once nothing of it runs. It leaves svc.udp as it
// is: the status may read it (a closed socket's drop count reads as
// none).
func (p *Proxy) closeUDP(s *service) {
	if s.flows == nil {
		return // not a UDP service
	}
	s.udpOnce.Do(func() {
		if s.udp == nil {
			s.pc.Close() // its goroutine closes its flows, then done
			return
		}
		closeAll(s.udp)
		p.closeFlows(s)
		s.udpWG.Wait() // one-packet datagrams' goroutines
		close(s.done)
	})
}

// dialSocket opens a flow's socket to addr, outside the runtime's poller.
func (p *Proxy) dialSocket(addr netip.AddrPort) (s *udpbatch.Socket, err error) {
	err = p.inNamespace(func() (err error) {
		s, err = udpbatch.Dial(addr)
		return err
	})
	return s, err
}
