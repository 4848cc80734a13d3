package proxy

import (
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/tetherlb/tether/tcploop"
	"github.com/tetherlb/tether/udpbatch"
	"golang.org/x/sys/unix"
)

// UDP services on the event loops (package tcploop's watches): the
// service's socket and its flows' sockets are read on one loop, as nginx
// and HAProxy serve UDP and TCP from the same loops, instead of a
// goroutine for the service and one for each flow's replies. A datagram
// then costs no goroutine wake-up, and needs no processor besides the
// loops': with goroutines, a busy TCP loop on every processor held UDP
// back for milliseconds a datagram.
//
// A flow on a loop is changed only there: the loop closes it when it has
// been idle (to the loop's tick, a tenth of a second), when the flow cap
// evicts it, and through onUDPLoop when another goroutine (a server going
// down, a reload, a stop) closes it.

// udpRounds bounds the batches one readiness report reads from a socket,
// so that a flood on one does not hold the loop's other sockets back:
// what is left is reported again.
const udpRounds = 4

// udpLoop reads a service's socket on its loop.
type udpLoop struct {
	p     *Proxy
	svc   *service
	u     *udpIn
	w     *tcploop.Watch // the loop's, set there
	wg    sync.WaitGroup // one-packet goroutines
	start func(*flow) error
}

// serveUDPOnLoop serves svc's datagrams on an event loop, and reports
// false when there are none (the loops off, or out of descriptors): a
// goroutine serves it then. On a loop the service's socket leaves the Go
// runtime's poller (its pc is closed for a duplicate, raw): every
// datagram the poller saw woke its thread, for nothing, a quarter of
// tether's CPU time under UDP load.
func (p *Proxy) serveUDPOnLoop(svc *service) bool {
	if p.loopCount < 0 {
		return false
	}
	ls, err := p.tcpLoops()
	if err == nil {
		fd := -1
		if cerr := svc.rc.Control(func(x uintptr) { fd, err = unix.FcntlInt(x, unix.F_DUPFD_CLOEXEC, 0) }); cerr != nil {
			err = cerr
		}
		if err == nil {
			raw := &rawSocket{fd: fd}
			ul := &udpLoop{p: p, svc: svc, u: newUDPIn(true)}
			ul.start = ul.startFlow
			// The loop reads it only once it is watched; the rest of
			// the service is in place before.
			pc, rc := svc.pc, svc.rc
			svc.pc, svc.raw, svc.rc, svc.udp = nil, raw, raw, ul
			if svc.watch, err = ls.Watch(fd, ul, false); err == nil {
				pc.Close()
				return true
			}
			svc.pc, svc.raw, svc.rc, svc.udp = pc, nil, rc, nil
			raw.Close()
		}
	}
	p.log.Error("the event loops cannot read a UDP service; a goroutine serves it", "listen", svc.pc.LocalAddr(), "err", err)
	return false
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

// Readable reads the service's datagrams, udpRounds batches at most.
func (ul *udpLoop) Readable(w *tcploop.Watch) {
	ul.w = w
	for range udpRounds {
		n, err := ul.u.in.ReadNow(ul.svc.rc)
		if err != nil || n == 0 {
			return // an error of the socket's (a stop takes it out of the loop before it closes it)
		}
		ul.p.datagrams(ul.svc, ul.u, n, w.Now(), &ul.wg, ul.start)
		if n < udpBatch {
			return
		}
	}
}

func (ul *udpLoop) Tick(*tcploop.Watch, int64) {}

// startFlow watches a new flow's socket on the service's loop.
func (ul *udpLoop) startFlow(f *flow) error {
	fl := &flowLoop{p: ul.p, svc: ul.svc, f: f, rel: udpbatch.NewRelay(ul.p.replies), idle: int64(f.st.cfg.Limits.IdleTimeout.D())}
	w, err := ul.w.Watch(f.raw.fd, fl, true)
	if err != nil {
		return err
	}
	f.w = w
	return nil
}

// flowLoop relays a flow's replies on its service's loop and ends the
// flow once it has been idle for the service's idle timeout.
type flowLoop struct {
	p    *Proxy
	svc  *service
	f    *flow
	rel  *udpbatch.Relay
	idle int64 // ns
}

// Readable sends what the server answered to the client, through the
// service's socket, udpRounds batches at most.
func (fl *flowLoop) Readable(w *tcploop.Watch) {
	f := fl.f
	for range udpRounds {
		bufs, total, out, err := fl.rel.NextNow(f.rc)
		if err != nil || bufs == nil {
			return // nothing, or an ICMP refusal and the like: the server may come back
		}
		f.last.Store(w.Now())
		switch err := out.WriteToNow(fl.svc.rc, bufs, &f.dst, f.dstLen); err {
		case nil:
			f.srv.bytesOut.Add(uint64(total))
			f.Out.Add(int64(total))
		case unix.EAGAIN:
			f.st.ev.addN(evUDPDropped, uint64(out.Unsent()))
		}
		fl.rel.Done()
		if len(bufs) < udpBatch {
			return
		}
	}
}

// Tick ends the flow once it has been idle for the idle timeout.
func (fl *flowLoop) Tick(_ *tcploop.Watch, now int64) {
	if now-fl.f.last.Load() >= fl.idle {
		fl.svc.flows.Remove(fl.f.client, fl.f)
		fl.p.closeFlow(fl.f, "idle timeout")
	}
}

// onUDPLoop runs f where svc's flows may be closed: on its event loop, or
// here when a goroutine serves it (or the loops have stopped).
func (p *Proxy) onUDPLoop(svc *service, f func()) {
	if svc.watch == nil || !svc.watch.Do(f) {
		f()
	}
}

// closeUDP stops a UDP service: its socket closes, and its flows with it;
// done is closed once nothing of it runs.
func (p *Proxy) closeUDP(s *service) {
	if s.rc == nil {
		return // not a UDP service
	}
	s.udpOnce.Do(func() {
		if s.udp == nil {
			s.pc.Close() // its goroutine closes its flows, then done
			return
		}
		p.onUDPLoop(s, func() {
			s.watch.Stop()
			p.closeFlows(s)
		})
		s.raw.Close()
		s.udp.wg.Wait() // one-packet datagrams' goroutines
		close(s.done)
	})
}
