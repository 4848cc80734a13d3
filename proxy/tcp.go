package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/tetherlb/tether/acceptloop"
	"github.com/tetherlb/tether/accesslog"
	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/proxyheader"
	"github.com/tetherlb/tether/tcprelay"
)

// acceptLoop runs until the service's listener is closed.
func (p *Proxy) acceptLoop(svc *service) {
	defer close(svc.done)
	acceptloop.Loop{
		Accept: svc.ln.AcceptTCP,
		Serve: func(c *net.TCPConn) {
			p.conns.wg.Add(1)
			go p.serveTCP(svc, c, 0)
		},
		Failed: p.acceptFailed(svc.ln.Addr().String()),
		Sleep:  time.Sleep,
	}.Run()
}

// serveTCP handles one client connection from accept to close. dport is
// the client's original destination port for a mark service, else 0.
func (p *Proxy) serveTCP(svc *service, client *net.TCPConn, dport uint16) {
	defer p.conns.wg.Done()
	st := svc.state.Load()
	st.ev.add(evAccepted)
	n := svc.active.Add(1)
	defer svc.active.Add(-1)
	lg := &accesslog.Counts{Start: p.accessLogging()}
	src := client.RemoteAddr().(*net.TCPAddr).AddrPort()
	if n > int64(st.maxConns) {
		p.atCap(st, src, lg) // before the client sees the refusal
		client.Close()
		return
	}
	if st.cfg.TrustsProxy(src.Addr()) {
		client.SetReadDeadline(time.Now().Add(proxyHeaderTimeout))
		real, err := proxyheader.Read(client)
		client.SetReadDeadline(time.Time{})
		if err != nil {
			st.ev.add(evBadProxyHeader)
			p.rlog.Log(slog.LevelWarn, "a trusted source's connection without a valid PROXY header closed", "service", st.cfg.Name, "source", src, "err", err)
			client.Close()
			p.accessLog(st, "tcp", src, netip.AddrPort{}, lg, "refused: "+err.Error())
			return
		}
		src = real // the client the balancer in front saw
	}
	if !st.cfg.Admits(src.Addr()) {
		st.ev.add(evDenied)
		client.SetLinger(0) // the close sends a reset
		client.Close()
		p.accessLog(st, "tcp", src, netip.AddrPort{}, lg, "refused: the service's access list")
		return
	}
	p.conns.add(client)
	defer p.conns.remove(client)

	ch, backend, err := p.connect(st, src.Addr(), dport)
	if errors.Is(err, affinity.ErrClientLimit) {
		client.SetLinger(0) // refused as a denied client is: with a reset
	} else if err != nil {
		st.ev.add(evFailed)
		p.rlog.Log(slog.LevelWarn, "no real server reached", "service", st.cfg.Name, "client", src, "err", err)
	}
	if err != nil {
		client.Close()
		p.accessLog(st, "tcp", src, netip.AddrPort{}, lg, "no server: "+err.Error())
		return
	}
	srv := ch.srv
	defer p.release(srv, ch.lease)
	p.conns.add(backend)
	defer p.conns.remove(backend)
	if v := st.sendProxy[srv]; v != "" {
		if err := proxyheader.Write(backend, v, src, client); err != nil {
			backend.Close()
			client.Close()
			p.accessLog(st, "tcp", src, serverAddr(srv, dport), lg, "aborted: the PROXY header: "+err.Error())
			return
		}
	}
	srv.accepted.Add(1)

	in, out, err := p.tcp.Copy(client, backend, st.cfg.Limits.IdleTimeout.D())
	if !lg.Start.IsZero() {
		lg.In.Store(in)
		lg.Out.Store(out)
		p.accessLog(st, "tcp", src, serverAddr(srv, dport), lg, p.tcpEnd(err))
	}
	srv.bytesIn.Add(uint64(in)) // before the deferred release (events.go)
	srv.bytesOut.Add(uint64(out))
}

// connect chooses a real server (choose) and dials it. A server that
// refuses or times out is taken out of scheduling, its templates dropped,
// and the next choice is tried, up to connect_attempts servers: a dead
// server costs no client a failure while another one is up.
func (p *Proxy) connect(st *serviceState, client netip.Addr, dport uint16) (choice, *net.TCPConn, error) {
	var tried []*server
	var lastErr error
	for range max(st.cfg.Limits.ConnectAttempts, 1) {
		ch, err := p.choose(st, client, tried)
		if err != nil {
			if lastErr != nil {
				err = lastErr // the dial error says more than "none left"
			}
			return ch, nil, err
		}
		st = ch.st
		c, err := p.dialServer(st, ch.srv, dport)
		if err == nil {
			return ch, c, nil
		}
		retry, why := p.connectFailed(st, ch, err)
		if !retry {
			return choice{}, nil, why
		}
		tried = append(tried, ch.srv)
		lastErr = err
	}
	return choice{}, nil, lastErr
}

// connectFailed gives back the choice whose connect failed with err and
// says whether the next server may be tried, and if not, the error to
// report: not when the host is to blame (the server keeps its clients),
// nor after the sorry server, nor once a stop gave up draining. Otherwise
// the server is taken out of scheduling (failed). Both TCP paths use it.
func (p *Proxy) connectFailed(st *serviceState, ch choice, err error) (retry bool, why error) {
	p.release(ch.srv, ch.lease)
	switch {
	case p.localFailure(st, err):
		return false, err
	case ch.srv == st.sorry:
		return false, fmt.Errorf("no real server is available; the sorry server: %w", err)
	case p.ctx.Err() != nil:
		return false, err
	}
	p.failed(st, ch.srv)
	return true, err
}

func (p *Proxy) dialServer(st *serviceState, srv *server, dport uint16) (*net.TCPConn, error) {
	c, err := p.dialNet(st, "tcp", serverAddr(srv, dport))
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// tcpEnd says, for the access log, how a connection's copy ended.
func (p *Proxy) tcpEnd(err error) string {
	switch {
	case err == nil:
		return "closed"
	case errors.Is(err, tcprelay.ErrIdle):
		return "idle timeout"
	case p.ctx.Err() != nil:
		return "stopped: the drain deadline passed"
	}
	return "aborted: " + err.Error()
}

// proxyHeaderTimeout bounds the wait for a trusted balancer's PROXY header.
const proxyHeaderTimeout = 5 * time.Second

// acceptFailed counts and logs (at most once a second) a failed accept.
func (p *Proxy) acceptFailed(listener string) func(error, time.Duration) {
	return func(err error, retry time.Duration) {
		p.ev.add(evAcceptErrors)
		p.rlog.Log(slog.LevelError, "accept failed; backing off", "listener", listener, "err", err, "retry_in", retry)
	}
}

// atCap records a connection the service refuses at its cap: the
// counter, the access log, and at most once a second a line, since the
// refusal is a reset to the client and the counter alone is easily missed
// (nginx logs "worker_connections are not enough" in the same place). A
// cap the config leaves out comes from the descriptor limit, and the line
// says so, since raising that is the cure.
func (p *Proxy) atCap(st *serviceState, src netip.AddrPort, lg *accesslog.Counts) {
	st.ev.add(evRejected)
	if p.capLine.Due() { // the arguments only for a line written: a flood allocates nothing
		from := "max_connections"
		if st.cfg.Limits.MaxConnections == 0 {
			from = "the descriptor limit (RLIMIT_NOFILE; set max_connections or raise the limit)"
		}
		p.capLine.Write("service", st.cfg.Name, "cap", st.maxConns, "from", from)
	}
	p.accessLog(st, "tcp", src, netip.AddrPort{}, lg, "refused: the service's connection cap")
}
