package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetherlb/tether/accesslog"
	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/lruset"
	"github.com/tetherlb/tether/udpbatch"
	"golang.org/x/sys/unix"
)

// UDP has no connections, so a flow stands in for one: a client
// address:port on a service. Each flow has its own connected socket to its
// server; replies go back through the service's socket, so the client sees
// them come from the VIP:port it sent to. A flow holds a lease on its
// persistence template until it has been idle for the service's idle
// timeout.
type flow struct {
	client netip.AddrPort
	srv    *server
	st     *serviceState
	lease  affinity.Lease
	conn   *net.UDPConn    // a goroutine's flow's socket, for its deadlines
	sock   io.Closer       // conn, or an event loop's udpbatch.Socket (udploop.go)
	rc     syscall.RawConn // sock's, for recvmmsg and sendmmsg
	// dst is the client as the service socket's sendmmsg takes it.
	dst              unix.RawSockaddrInet6
	dstLen           uint32
	last             atomic.Int64 // unix ns of the last datagram either way
	closed           atomic.Bool
	accesslog.Counts // for the access log
	// out is the service's socket on the loop that reads the flow's
	// (replies go out through it); nil when a goroutine relays them.
	out *udpbatch.Socket
}

// flowTable is a service's flows, by client address:port.
type flowTable = lruset.Set[netip.AddrPort, *flow]

func newFlowTable(size int) *flowTable { return lruset.New[netip.AddrPort, *flow](size) }

// UDPFlows is the number of open flows of the UDP service listening on
// listen (for tests and the admin listing).
func (p *Proxy) UDPFlows(listen netip.AddrPort) int {
	p.svcMu.RLock()
	s := p.services[config.ServiceKey{VIP: listen, UDP: true}]
	p.svcMu.RUnlock()
	if s == nil || s.flows == nil {
		return 0
	}
	return s.flows.Len()
}

// errDenied: the service's access list refuses the client.
var errDenied = errors.New("the service's access list refuses the client")

// udpBatch is how many datagrams one recvmmsg takes from a service's
// socket, and one sendmmsg gives a flow's socket.
const udpBatch = 16

// serveUDP reads the service's datagrams until its socket closes, a batch
// per system call, in a goroutine of its own: the service's path when the
// event loops are off (udploop.go is the other). Each flow's replies
// have a goroutine too.
func (p *Proxy) serveUDP(svc *service) {
	defer close(svc.done)
	var wg sync.WaitGroup // flow and one-packet goroutines
	defer wg.Wait()
	defer p.closeFlows(svc)
	u := newUDPIn(func(f *flow) (err error) {
		if f.conn, err = p.dialUDP(f.st, f.srv.Addr); err != nil {
			return err
		}
		f.sock = f.conn
		if f.rc, err = f.conn.SyscallConn(); err != nil {
			f.conn.Close()
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.flowReplies(svc, f)
		}()
		return nil
	})
	for {
		n, err := u.in.Read(svc.rc)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		p.datagrams(svc, u, n, time.Now().UnixNano(), &wg)
	}
}

// udpIn is a service's reading of its datagrams: the batch, the run of
// one flow's datagrams gathered to go to its server in one sendmmsg, and
// open, which gives a new flow its socket and relays its replies (in a
// goroutine, or on an event loop: udploop.go).
type udpIn struct {
	in      *udpbatch.Reader
	out     *udpbatch.Writer
	run     [][]byte
	runFlow *flow
	open    func(*flow) error
}

func newUDPIn(open func(*flow) error) *udpIn {
	return &udpIn{in: udpbatch.NewReader(udpBatch, 64<<10), out: udpbatch.NewWriter(udpBatch), run: make([][]byte, 0, udpBatch), open: open}
}

// datagrams hands the n datagrams u read (at now, unix ns) to their flows,
// making the flows that are new, and a run of datagrams of one flow goes
// to its server in one system call.
func (p *Proxy) datagrams(svc *service, u *udpIn, n int, now int64, wg *sync.WaitGroup) {
	st := svc.state.Load()
	for i := range n {
		b, src, ok := u.in.Msg(i)
		if !ok {
			continue // truncated: larger than any UDP datagram
		}
		if st.cfg.OnePacket {
			p.onePacket(svc, st, src, b, wg)
			continue
		}
		if u.runFlow != nil && u.runFlow.client == src {
			u.run = append(u.run, b) // the run's flow again: no lookup
			continue
		}
		f, err := p.flowFor(svc, st, src, u.open)
		if err != nil {
			what := evUDPDropped
			if err == errDenied {
				what = evUDPDenied
			}
			st.ev.add(what)
			continue
		}
		f.last.Store(now)
		p.flush(u)
		u.runFlow = f
		u.run = append(u.run, b)
	}
	p.flush(u)
}

// flush sends the run of datagrams to its flow's server. A loop's flow
// socket does not wait: what it cannot take at once is dropped, and
// counted.
func (p *Proxy) flush(u *udpIn) {
	if len(u.run) > 0 {
		f := u.runFlow
		if err := u.out.Write(f.rc, u.run); err == nil {
			for _, b := range u.run {
				f.srv.bytesIn.Add(uint64(len(b)))
				f.In.Add(int64(len(b)))
			}
		} else if err == unix.EAGAIN {
			f.st.ev.addN(evUDPDropped, uint64(u.out.Unsent()))
		}
	}
	u.run, u.runFlow = u.run[:0], nil
}

// flowFor returns the client's flow, making it (scheduled through the
// persistence table) when there is none; open gives a new one its socket
// and relays its replies.
func (p *Proxy) flowFor(svc *service, st *serviceState, src netip.AddrPort, open func(*flow) error) (*flow, error) {
	f, ok := svc.flows.Get(src)
	if ok && !f.closed.Load() {
		return f, nil
	}
	if !st.cfg.Admits(src.Addr()) {
		return nil, errDenied
	}
	if !roomForFlow(p, svc.flows, p.closeFlow) {
		return nil, errors.New("udp_max_flows reached")
	}
	ch, err := p.choose(st, src.Addr(), nil)
	if err != nil {
		return nil, err
	}
	srv, lease := ch.srv, ch.lease
	f = &flow{client: src, srv: srv, st: ch.st, lease: lease}
	f.Start = p.accessLogging()
	f.dstLen = udpbatch.Sockaddr(src, svc.family, &f.dst)
	f.last.Store(time.Now().UnixNano())
	if err := open(f); err != nil { // before the flow is published: it is complete then
		p.release(srv, lease)
		p.localFailure(ch.st, err) // counted apart: no UDP server is marked failed anyway
		return nil, err
	}
	p.flowsTotal.Add(1)
	srv.accepted.Add(1)
	for _, e := range svc.flows.Add(src, f) {
		st.ev.add(evUDPFlowsEvicted)
		p.closeFlow(e, "evicted: the service's flow cap")
	}
	return f, nil
}

func (p *Proxy) dialUDP(st *serviceState, addr netip.AddrPort) (*net.UDPConn, error) {
	c, err := p.dialNet(st, "udp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

// flowReplies relays the server's replies to the client until the flow has
// been idle for the idle timeout (or is closed): what is queued on the
// flow's socket is read with one recvmmsg and sent to the client with one
// sendmmsg (batchRelay).
func (p *Proxy) flowReplies(svc *service, f *flow) {
	idle := f.st.cfg.Limits.IdleTimeout.D()
	rel := udpbatch.NewRelay(p.replies)
	armIdle(f.conn, &f.last, idle)
	for {
		bufs, total, out, err := rel.Next(f.rc)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && armIdle(f.conn, &f.last, idle) {
				continue // used meanwhile
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) && !f.closed.Load() {
				continue // ICMP refusal and the like: the server may come back
			}
			svc.flows.Remove(f.client, f)
			p.closeFlow(f, "idle timeout")
			return
		}
		f.last.Store(time.Now().UnixNano())
		if err := out.WriteTo(svc.rc, bufs, &f.dst, f.dstLen); err == nil {
			f.srv.bytesOut.Add(uint64(total))
			f.Out.Add(int64(total))
		}
		rel.Done()
	}
}

// armIdle sets c's read deadline to idle after the flow's last datagram
// (last, unix ns), and says whether that is still ahead: false means the
// flow has been idle for idle. Traffic only moves last; the deadline is
// moved on when it fires on a flow used meanwhile, not reset per batch.
func armIdle(c *net.UDPConn, last *atomic.Int64, idle time.Duration) bool {
	l := time.Unix(0, last.Load())
	if time.Since(l) >= idle {
		return false
	}
	c.SetReadDeadline(l.Add(idle))
	return true
}

// closeFlow ends a flow once: its socket, its server count, its lease;
// end says why, for the access log. Any goroutine may: a flow's loop
// forgets its socket at its next tick (udploop.go).
func (p *Proxy) closeFlow(f *flow, end string) {
	if f.closed.Swap(true) {
		return
	}
	p.flowsTotal.Add(-1)
	f.sock.Close()
	p.release(f.srv, f.lease)
	p.accessLog(f.st, "udp", f.client, f.srv.Addr, &f.Counts, end)
}

func (p *Proxy) closeFlows(svc *service) {
	for _, f := range svc.flows.Drain() {
		p.closeFlow(f, "stopped")
	}
}

// onePacket schedules one datagram on its own (ipvsadm's -o): a socket of
// its own to the chosen server, and the first reply, if one comes within
// the idle timeout (at most 5 s), goes back to the client.
//
// Datagrams in flight are bounded (budget.Caps.OnePacket): past the bound
// a datagram is dropped and counted, as the kernel drops what a full
// socket cannot take. A datagram waiting for its reply holds a socket and
// a goroutine, and a buffer only while the reply is being read.
func (p *Proxy) onePacket(svc *service, st *serviceState, src netip.AddrPort, b []byte, wg *sync.WaitGroup) {
	if !st.cfg.Admits(src.Addr()) {
		st.ev.add(evUDPDenied)
		return
	}
	if p.onePackets.Add(1) > int64(p.caps.Load().OnePacket) {
		p.onePackets.Add(-1)
		st.ev.add(evUDPOnePacketDropped)
		return
	}
	ch, err := p.choose(st, src.Addr(), nil)
	if err != nil {
		p.onePackets.Add(-1)
		return
	}
	srv := ch.srv
	release := func() { p.release(srv, ch.lease); p.onePackets.Add(-1) }
	conn, err := p.dialUDP(st, srv.Addr)
	var rc syscall.RawConn
	if err == nil {
		if rc, err = conn.SyscallConn(); err != nil {
			conn.Close()
		}
	}
	if err != nil {
		p.localFailure(st, err)
		release()
		return
	}
	if _, err := conn.Write(b); err != nil {
		conn.Close()
		release()
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer release()
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(min(st.cfg.Limits.IdleTimeout.D(), 5*time.Second)))
		rel := udpbatch.NewRelay(p.replies) // the buffer only once the reply is there
		bufs, _, out, err := rel.Next(rc)
		if err == nil && len(bufs) > 0 {
			var sa unix.RawSockaddrInet6
			n := udpbatch.Sockaddr(src, svc.family, &sa)
			if out.WriteTo(svc.rc, bufs[:1], &sa, n) == unix.EAGAIN { // a loop's socket does not wait
				st.ev.add(evUDPDropped)
			}
		}
		rel.Done()
	}()
}
