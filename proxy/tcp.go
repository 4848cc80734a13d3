package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/tetherlb/tether/affinity"
)

// acceptLoop runs until the listener is closed.
func (p *Proxy) acceptLoop(svc *service) {
	defer close(svc.done)
	var delay time.Duration
	for {
		c, err := svc.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off as net/http does, keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			p.log.Error("accept failed", "service", svc.state.Load().cfg.Name, "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		p.conns.wg.Add(1)
		go p.serveTCP(svc, c, 0)
	}
}

// serveTCP handles one client connection from accept to close. dport is
// the client's original destination port for a mark service, else 0.
func (p *Proxy) serveTCP(svc *service, client *net.TCPConn, dport uint16) {
	defer p.conns.wg.Done()
	st := svc.state.Load()
	p.count("connections", "accepted", 1, st.labels)
	n := svc.active.Add(1)
	defer svc.active.Add(-1)
	if max := st.cfg.Limits.MaxConnections; max > 0 && n > int64(max) {
		p.count("connections", "rejected", 1, st.labels)
		client.Close()
		return
	}
	p.conns.add(client)
	defer p.conns.remove(client)

	src := client.RemoteAddr().(*net.TCPAddr).AddrPort()
	srv, lease, backend, err := p.connect(st, src.Addr(), dport)
	if err != nil {
		p.count("connections", "failed", 1, st.labels)
		p.log.Warn("no real server reached", "service", st.cfg.Name, "client", src, "err", err)
		client.Close()
		return
	}
	defer p.release(srv, lease)
	p.conns.add(backend)
	defer p.conns.remove(backend)
	srv.accepted.Add(1)
	slabels := st.serverLabels(srv)
	p.count("server", "connections", 1, slabels)

	in, out := pipe(client, backend, st.cfg.Limits.IdleTimeout.D())
	srv.bytesIn.Add(uint64(in))
	srv.bytesOut.Add(uint64(out))
	p.count("server", "bytes_in", float32(in), slabels)
	p.count("server", "bytes_out", float32(out), slabels)
}

// count adds v to the counter a.b with labels, when metrics are on; off,
// it costs nothing (the key is built only here).
func (p *Proxy) count(a, b string, v float32, labels []metrics.Label) {
	if p.metricsOn {
		p.met.IncrCounterWithLabels([]string{a, b}, v, labels)
	}
}

// connect chooses a real server and dials it. A server that refuses or
// times out is taken out of scheduling, its templates dropped, and the
// next choice is tried, up to connect_attempts servers: a dead server costs
// no client a failure while another one is up.
func (p *Proxy) connect(st *serviceState, client netip.Addr, dport uint16) (*Server, affinity.Lease, *net.TCPConn, error) {
	if !st.quorate() {
		return p.connectSorry(st, dport, errBelowQuorum)
	}
	pk := &picker{p: p, st: st}
	var lastErr error = errNoServer
	for range max(st.cfg.Limits.ConnectAttempts, 1) {
		var srv *Server
		var lease affinity.Lease
		if st.persistent {
			l, err := p.table.GetOrBind(st.ref, client, pk)
			if err != nil {
				return p.connectSorry(st, dport, err)
			}
			lease, srv = l, st.byAddr[l.Server]
			if srv == nil {
				// Bound by a newer config than the one this connection
				// started with; a retry sees the newer one.
				p.table.Release(l)
				lastErr = errNoServer
				st = p.current(st)
				pk.st = st
				continue
			}
			p.count("schedule", decision(l.Hit), 1, st.labels)
		} else {
			if srv = st.sched.Pick(client, pk.tried); srv == nil {
				return p.connectSorry(st, dport, lastErr)
			}
			p.count("schedule", "scheduler", 1, st.labels)
		}
		srv.conns.Add(1)
		c, err := p.dialServer(st, srv, dport)
		if err == nil {
			return srv, lease, c, nil
		}
		p.release(srv, lease)
		if p.ctx.Err() != nil {
			return nil, lease, nil, err
		}
		p.failed(st, srv)
		pk.tried = append(pk.tried, srv)
		lastErr = err
	}
	return nil, affinity.Lease{}, nil, lastErr
}

// connectSorry connects to the sorry server, if the service has one, when
// none of its servers can take the client (cause); the connection holds
// no template.
func (p *Proxy) connectSorry(st *serviceState, dport uint16, cause error) (*Server, affinity.Lease, *net.TCPConn, error) {
	sorry := p.sorryFor(st, cause)
	if sorry == nil {
		return nil, affinity.Lease{}, nil, cause
	}
	sorry.conns.Add(1)
	c, err := p.dialServer(st, sorry, dport)
	if err != nil {
		sorry.conns.Add(-1)
		return nil, affinity.Lease{}, nil, fmt.Errorf("%w; the sorry server: %w", cause, err)
	}
	return sorry, affinity.Lease{}, c, nil
}

func (p *Proxy) dialServer(st *serviceState, srv *Server, dport uint16) (*net.TCPConn, error) {
	c, err := p.dialNet(st, "tcp", serverAddr(srv, dport))
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func decision(hit bool) string {
	if hit {
		return "template"
	}
	return "scheduler"
}

// pipe copies both ways until both directions are done and returns the
// bytes from the client (in) and to it (out). Each direction is io.Copy
// between two *net.TCPConn, which the runtime runs as splice(2); at EOF
// the direction is half-closed with CloseWrite, so a client that shuts
// down its sending side still gets the whole reply. An error in one
// direction aborts both.
func pipe(client, backend *net.TCPConn, idle time.Duration) (in, out int64) {
	var idleA, idleB atomic.Bool
	var ended atomic.Int32
	done := make(chan int64, 1)
	go func() { done <- copyHalf(backend, client, idle, &idleA, &idleB, &ended) }()
	out = copyHalf(client, backend, idle, &idleB, &idleA, &ended)
	in = <-done
	client.Close()
	backend.Close()
	return in, out
}

// idleChunk bounds one splice run when an idle timeout is set, so that the
// deadline is re-armed as long as bytes flow (io.CopyN keeps splice: the
// runtime splices from an *io.LimitedReader of a *net.TCPConn).
const idleChunk = 256 << 10

// copyHalf copies src to dst, then half-closes dst; ended counts the
// directions done. With an idle timeout,
// a direction that saw no byte for the timeout marks itself idle, and the
// connection is closed when the other direction is idle too.
func copyHalf(dst, src *net.TCPConn, idle time.Duration, self, other *atomic.Bool, ended *atomic.Int32) int64 {
	if idle <= 0 {
		n, err := io.Copy(dst, src)
		finish(dst, src, err, ended)
		return n
	}
	var total int64
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		n, err := io.CopyN(dst, src, idleChunk)
		total += n
		if n > 0 {
			self.Store(false)
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, os.ErrDeadlineExceeded) && n == 0:
			self.Store(true)
			if !other.Load() {
				continue
			}
			err = errIdle
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue
		case errors.Is(err, io.EOF):
			err = nil
		}
		finish(dst, src, err, ended)
		return total
	}
}

var errIdle = errors.New("idle timeout")

// finish ends one direction: a clean EOF half-closes, an error aborts both.
// The second direction to end skips the half-close: pipe closes both
// sockets next, and the close sends the FIN (a system call less for every
// connection; both receive queues are drained, so it is a FIN, not a RST).
func finish(dst, src *net.TCPConn, err error, ended *atomic.Int32) {
	last := ended.Add(1) == 2
	if err == nil {
		if !last {
			dst.CloseWrite()
		}
		return
	}
	dst.Close()
	src.Close()
}
