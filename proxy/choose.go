package proxy

import (
	"errors"
	"log/slog"
	"net/netip"
	"syscall"
	"time"

	"github.com/tetherlb/tether/affinity"
)

// choice is the server a new connection or flow goes to, and what it
// holds there: a count on the server and, for a persistent service, a
// lease on the client's template. st is the service state the server
// belongs to, newer than the one asked for when a reload raced the choice.
type choice struct {
	st    *serviceState
	srv   *server
	lease affinity.Lease
}

// choose picks the server of a new TCP connection, UDP flow or director
// flow, the same way for all three: below quorum, the sorry server;
// persistent, the client's template (bound by the scheduler on a miss);
// otherwise the scheduler; with no server available, the sorry server.
// tried are the servers this connection already failed to reach. The
// choice holds a count on its server (and its lease): p.release gives
// them back.
func (p *Proxy) choose(st *serviceState, client netip.Addr, tried []*server) (choice, error) {
	// A second round only when the template named a server that only a
	// newer config has (bound by a connection that started after a reload).
	for range 2 {
		if !st.quorate() {
			return p.sorry(st, errBelowQuorum)
		}
		if !st.persistent {
			srv := st.sched.Pick(client, tried)
			if srv == nil {
				return p.sorry(st, errNoServer)
			}
			st.ev.add(evScheduler)
			srv.conns.Open()
			return choice{st: st, srv: srv}, nil
		}
		l, err := p.table.GetOrBind(st.ref, client, &picker{p: p, st: st, tried: tried})
		if errors.Is(err, affinity.ErrClientLimit) {
			st.ev.add(evClientLimited)
			return choice{st: st}, err
		}
		if err != nil {
			return p.sorry(st, err)
		}
		srv := st.byAddr[l.Server()]
		if srv == nil {
			p.table.Release(l)
			st = p.current(st)
			continue
		}
		st.ev.add(decision(l.Hit))
		srv.conns.Open()
		return choice{st: st, srv: srv, lease: l}, nil
	}
	return p.sorry(st, errNoServer)
}

// sorry is the sorry server's choice for a client no server could take
// (cause says why), counted; cause itself when the service has no sorry
// server or cause is another failure. It holds no template.
func (p *Proxy) sorry(st *serviceState, cause error) (choice, error) {
	if st.sorry == nil || !errors.Is(cause, errNoServer) && !errors.Is(cause, errBelowQuorum) {
		return choice{st: st}, cause
	}
	st.ev.add(evSorry)
	st.sorry.conns.Open()
	return choice{st: st, srv: st.sorry}, nil
}

func decision(hit bool) event {
	if hit {
		return evTemplate
	}
	return evScheduler
}

// picker adapts a service's scheduler to affinity.Picker for one
// connection: it hashes the masked client (so that sh and mh put a whole
// client group on one server in every instance) and skips the servers this
// connection already failed to reach.
type picker struct {
	p     *Proxy
	st    *serviceState
	tried []*server
}

func (pk *picker) Pick(client netip.Addr) (netip.AddrPort, error) {
	s := pk.st.sched.Pick(pk.st.mask.Apply(client), pk.tried)
	if s == nil {
		return netip.AddrPort{}, errNoServer
	}
	pk.p.recovered(pk.st, s)
	return s.Addr, nil
}

// release gives back what a connection or flow held: its count on srv and
// its lease (the zero Lease for none).
func (p *Proxy) release(srv *server, lease affinity.Lease) {
	srv.conns.Close()
	p.table.Release(lease)
}

// localFailure reports whether a connect to a real server failed for a
// reason of this host's, not the server's: out of descriptors (EMFILE,
// ENFILE), buffers (ENOBUFS), local ports (EADDRNOTAVAIL) or memory
// (ENOMEM). Such a failure costs the one client connection, counts in
// connections_local_errors and is logged at most once a second; it
// touches no server state and no template, so no client loses its server
// to the host's trouble.
func (p *Proxy) localFailure(st *serviceState, err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.EADDRNOTAVAIL, syscall.ENOMEM} {
		if errors.Is(err, e) {
			st.ev.add(evLocalErrors)
			p.rlog.Log(slog.LevelWarn, "a connection to a real server failed for a local reason; the client's connection is closed, the server keeps its clients",
				"service", st.cfg.Name, "err", err)
			return true
		}
	}
	return false
}

// failed takes a server that refused or timed out a connect out of
// scheduling for failTimeout and drops its templates.
func (p *Proxy) failed(st *serviceState, s *server) {
	s.failed.Add(1)
	s.failedUntil.Store(time.Now().Add(failTimeout).UnixNano())
	if st.persistent {
		p.table.SetServer(st.ref, s.Addr, affinity.ServerDown)
	}
	p.log.Warn("real server failed a connect; skipped for new clients", "service", st.cfg.Name, "server", s.Addr, "for", failTimeout)
}

// recovered tells the table that a server whose failure period has passed
// takes templates again, before the scheduler's choice of it is bound.
func (p *Proxy) recovered(st *serviceState, s *server) {
	if f := s.failedUntil.Load(); f != 0 && s.failedUntil.CompareAndSwap(f, 0) && st.persistent {
		p.table.SetServer(st.ref, s.Addr, tableState(s))
	}
}
