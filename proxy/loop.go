package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/tetherlb/tether/accesslog"
	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/proxyheader"
	"github.com/tetherlb/tether/tcploop"
	"golang.org/x/sys/unix"
)

// TCP connections on the event loops (package tcploop): the same steps as
// serveTCP, as callbacks. A connection from a source trusted to send a
// PROXY header is handed to serveTCP, which reads it.

// loopService is the tcploop.Service of one plain service's listener, or
// (svc nil) of a transparent listener, whose connections are classified
// to their mark service one by one.
type loopService struct {
	p   *Proxy
	svc *service
	// marked: a transparent listener's, or (dst valid) a listened mark
	// class's listener on dst.
	marked bool
	dst    netip.AddrPort
	// name is the listener, for the accept-failure log.
	name string
}

// loopConn is a connection's state on the loop.
type loopConn struct {
	svc       *service
	st        *serviceState
	src       netip.AddrPort
	dport     uint16
	ch        choice
	tried     []*server
	attempts  int
	lastErr   error
	connected bool
	lg        accesslog.Counts
}

// tcpLoops starts the event loops at the first listener that needs them.
// It runs on the control loop.
func (p *Proxy) tcpLoops() (*tcploop.Loops, error) {
	if p.loops == nil {
		ls, err := tcploop.New(p.loopsWanted(), p.tcp) // as many as listenTCP opens listeners for
		if err != nil {
			return nil, fmt.Errorf("the TCP event loops: %w", err)
		}
		p.loops = ls
	}
	return p.loops, nil
}

// listenOnLoops serves ln's connections on the event loops and returns
// the stop that ends accepting (the caller closes ln after it). With the
// loops off (Options.TCPLoops < 0), or when they cannot start (the host
// out of descriptors), it runs accept, a goroutine for each connection,
// and returns nil.
func (p *Proxy) listenOnLoops(lns []*net.TCPListener, s *loopService, accept func()) (stop func()) {
	if p.loopCount >= 0 {
		ls, err := p.tcpLoops()
		if err == nil {
			s.p, s.name = p, lns[0].Addr().String()
			if stop, err = ls.Listen(lns, s); err == nil {
				return stop
			}
		}
		p.log.Error("the event loops cannot accept; a goroutine per connection serves this listener", "listen", lns[0].Addr(), "err", err)
		for _, l := range lns[1:] {
			l.Close() // accept takes the first only: the kernel sends the siblings nothing once closed
		}
	}
	go accept()
	return nil
}

// loopsWanted is how many event loops serve TCP: Options.TCPLoops, one
// per CPU for 0, and none (a goroutine per connection) below.
func (p *Proxy) loopsWanted() int {
	if p.loopCount == 0 {
		return runtime.GOMAXPROCS(0)
	}
	return max(p.loopCount, 0)
}

// listenTCP opens the listeners of addr: one for each event loop, with
// SO_REUSEPORT, so that the kernel spreads new connections over the
// loops and a connection wakes one loop only (HAProxy's and nginx's
// reuseport). Extra listeners that the kernel refuses only cost the
// spread: the loops then share the first. SO_REUSEPORT is set with one
// loop too, as HAProxy sets it by default: without event loops, a reload
// that moves an address between a mark class and a `listen:` service
// opens the new owner's listener while the old one still listens, and
// closes the old once the new is in place (the event loops hand the
// sockets themselves on: plan.handed).
// control, if not nil, sets the socket options a listener also needs.
func (p *Proxy) listenTCP(network, addr string, control func(network string, fd int) error) ([]*net.TCPListener, error) {
	n := p.loopsWanted()
	lc := net.ListenConfig{KeepAlive: -1} // see serviceState.dialer
	lc.Control = func(network, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			if control != nil {
				serr = control(network, int(fd))
			}
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
		}); err != nil {
			return err
		}
		return serr
	}
	l, err := lc.Listen(p.ctx, network, addr)
	if err != nil {
		return nil, err
	}
	lns := []*net.TCPListener{l.(*net.TCPListener)}
	for range n - 1 {
		l, err := lc.Listen(p.ctx, network, lns[0].Addr().String())
		if err != nil {
			p.log.Warn("a listener for each event loop was refused; the loops share one", "listen", addr, "err", err)
			for _, l := range lns[1:] {
				l.Close()
			}
			return lns[:1], nil
		}
		lns = append(lns, l.(*net.TCPListener))
	}
	return lns, nil
}

func (s *loopService) Accept(c *tcploop.Conn) tcploop.Decision {
	p := s.p
	svc, dport := s.svc, uint16(0)
	if s.marked {
		if svc, dport = p.classifyConn(c, s.dst); svc == nil {
			p.ev.add(evUnclassified)
			return tcploop.Refuse
		}
	}
	st := svc.state.Load()
	src := c.Src()
	if st.cfg.TrustsProxy(src.Addr()) {
		p.conns.wg.Add(1)
		return tcploop.Decision{Handoff: func(fd int) { p.handoff(svc, fd, dport) }}
	}
	st.ev.add(evAccepted)
	lc := &loopConn{svc: svc, st: st, src: src, dport: dport}
	lc.lg.Start = p.accessLogging()
	if n := svc.active.Add(1); n > int64(st.maxConns) {
		svc.active.Add(-1)
		p.atCap(st, src, &lc.lg)
		return tcploop.Refuse
	}
	if !st.cfg.Admits(src.Addr()) {
		svc.active.Add(-1)
		st.ev.add(evDenied)
		p.accessLog(st, "tcp", src, netip.AddrPort{}, &lc.lg, "refused: the service's access list")
		return tcploop.Decision{Server: -1, Reset: true}
	}
	c.Data = lc
	d := s.next(c, lc)
	if d.Server < 0 { // no Done follows a refusal at accept
		s.finish(lc, 0, 0, lc.lastErr)
	} else {
		p.conns.wg.Add(1)
	}
	return d
}

// next chooses a server and starts a connect to it, as connect does, up
// to connect_attempts servers.
func (s *loopService) next(c *tcploop.Conn, lc *loopConn) tcploop.Decision {
	p := s.p
	for lc.attempts < max(lc.st.cfg.Limits.ConnectAttempts, 1) {
		lc.attempts++
		ch, err := p.choose(lc.st, lc.src.Addr(), lc.tried)
		if err != nil {
			if lc.lastErr == nil {
				lc.lastErr = err // else the dial error says more than "none left"
			}
			return s.refuse(lc)
		}
		lc.st, lc.ch = ch.st, ch
		var hdr []byte
		if v := lc.st.sendProxy[ch.srv]; v != "" {
			local, err := c.Local()
			if err == nil {
				hdr, err = proxyheader.Header(v, lc.src, local)
			}
			if err != nil {
				p.release(ch.srv, ch.lease)
				lc.ch = choice{}
				lc.lastErr = fmt.Errorf("the PROXY header: %w", err)
				return s.refuse(lc)
			}
		}
		fd, err := p.loopDial(serverAddr(ch.srv, lc.dport))
		if err == nil {
			return tcploop.Decision{Server: fd, Header: hdr, ConnectTimeout: lc.st.dialer.Timeout, Idle: lc.st.cfg.Limits.IdleTimeout.D()}
		}
		if !s.failedServer(lc, err) {
			return s.refuse(lc)
		}
	}
	return s.refuse(lc)
}

// failedServer gives a failed connect's server back and says whether the
// next one may be tried: not when the host is to blame, nor after the
// sorry server, nor once a stop gave up draining.
func (s *loopService) failedServer(lc *loopConn, err error) bool {
	ch := lc.ch
	lc.ch = choice{}
	retry, why := s.p.connectFailed(lc.st, ch, err)
	lc.lastErr = why
	if retry {
		lc.tried = append(lc.tried, ch.srv)
	}
	return retry
}

// refuse is the Decision when no server is reached.
func (s *loopService) refuse(lc *loopConn) tcploop.Decision {
	if errors.Is(lc.lastErr, affinity.ErrClientLimit) {
		return tcploop.Decision{Server: -1, Reset: true} // refused as a denied client is
	}
	lc.st.ev.add(evFailed)
	s.p.rlog.Log(slog.LevelWarn, "no real server reached", "service", lc.st.cfg.Name, "client", lc.src, "err", lc.lastErr)
	return tcploop.Refuse
}

func (s *loopService) Failed(c *tcploop.Conn, err error) tcploop.Decision {
	lc := c.Data.(*loopConn)
	if errors.Is(err, tcploop.ErrConnectTimeout) {
		err = fmt.Errorf("dial tcp %s: %w", serverAddr(lc.ch.srv, lc.dport), os.ErrDeadlineExceeded)
	}
	if !s.failedServer(lc, err) {
		return s.refuse(lc)
	}
	return s.next(c, lc)
}

func (s *loopService) Connected(c *tcploop.Conn) {
	lc := c.Data.(*loopConn)
	lc.connected = true
	lc.ch.srv.accepted.Add(1)
}

func (s *loopService) Done(c *tcploop.Conn, in, out int64, err error) {
	s.finish(c.Data.(*loopConn), in, out, err)
	s.p.conns.wg.Done()
}

// finish closes a connection's books: its server's lease and counts, the
// service's open count, the access log.
func (s *loopService) finish(lc *loopConn, in, out int64, err error) {
	p := s.p
	lc.svc.active.Add(-1)
	if !lc.connected {
		if lc.ch.srv != nil { // the connection ended while its connect was in flight
			p.release(lc.ch.srv, lc.ch.lease)
		}
		if err == nil {
			err = lc.lastErr
		}
		p.accessLog(lc.st, "tcp", lc.src, netip.AddrPort{}, &lc.lg, "no server: "+errString(err))
		return
	}
	srv := lc.ch.srv
	// The bytes before the release: a removed server's counters are
	// reported until its last connection is released (events.go).
	srv.bytesIn.Add(uint64(in))
	srv.bytesOut.Add(uint64(out))
	p.release(srv, lc.ch.lease)
	if !lc.lg.Start.IsZero() {
		lc.lg.In.Store(in)
		lc.lg.Out.Store(out)
		p.accessLog(lc.st, "tcp", lc.src, serverAddr(srv, lc.dport), &lc.lg, p.tcpEnd(err))
	}
}

func (s *loopService) AcceptFailed(err error, retry time.Duration) {
	s.p.acceptFailed(s.name)(err, retry)
}

func errString(err error) string {
	if err == nil {
		return "closed"
	}
	return err.Error()
}

// loopDial starts a connect to addr from the proxy's namespace.
func (p *Proxy) loopDial(addr netip.AddrPort) (int, error) {
	dial := tcploop.Dial
	if p.loopDialHook != nil {
		dial = p.loopDialHook
	}
	fd := -1
	err := p.inNamespace(func() (err error) {
		fd, err = dial(addr)
		return err
	})
	return fd, err
}

// handoff serves a connection the loop accepted in a goroutine of its own
// (serveTCP), which reads a trusted balancer's PROXY header.
func (p *Proxy) handoff(svc *service, fd int, dport uint16) {
	f := os.NewFile(uintptr(fd), "tcp")
	c, err := net.FileConn(f)
	f.Close() // FileConn holds a copy
	if err != nil {
		p.conns.wg.Done()
		p.rlog.Log(slog.LevelError, "a connection could not be handed to its reader", "err", err)
		return
	}
	go p.serveTCP(svc, c.(*net.TCPConn), dport)
}
