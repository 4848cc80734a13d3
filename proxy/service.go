package proxy

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	metrics "github.com/hashicorp/go-metrics"

	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/budget"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/nft"
	"github.com/tetherlb/tether/sched"
)

// errNoServer: every server is down, quiescent, full or already tried.
var errNoServer = errors.New("no real server is available")

// errBelowQuorum: the available servers' weights are below the quorum.
var errBelowQuorum = errors.New("the service is below its quorum")

// failTimeout is how long a server that refused or timed out a connect is
// skipped for new clients (nginx's fail_timeout, with max_fails=1). Its
// templates are dropped at once, so its clients are rescheduled.
const failTimeout = 10 * time.Second

// service is one virtual service: a listener and the state its connections
// read. The state is replaced whole on reload; connections keep the state
// they started with.
type service struct {
	key config.ServiceKey
	// director: the NFQUEUE director serves it (no socket of its own).
	director bool
	ln       *net.TCPListener
	more     []*net.TCPListener // ln's SO_REUSEPORT siblings: a listener per event loop
	pc       *net.UDPConn       // a udp service's socket, read by a goroutine
	morePC   []*net.UDPConn     // pc's SO_REUSEPORT siblings, until the loops take them
	rc       syscall.RawConn    // pc's, or the first loop's socket's: for sendmmsg and handover
	family   int                // pc's address family
	flows    *flowTable         // a udp service's flows
	// udp read a udp service's sockets on the event loops (udploop.go),
	// one a loop; nil when a goroutine does. udpWG waits for its
	// one-packet datagrams' goroutines; udpOnce closes it once.
	udp     []*udpLoop
	udpWG   sync.WaitGroup
	udpOnce sync.Once
	state   atomic.Pointer[serviceState]
	active  atomic.Int64  // open client connections
	done    chan struct{} // closed when the accept loop has returned
	// stopAccept ends the event loops' accepting from ln; nil when a
	// goroutine of its own accepts.
	stopAccept func()
}

// closeListener stops accepting and closes the listener; done is closed
// once no accept runs.
func (s *service) closeListener() {
	if s.ln == nil {
		return
	}
	if s.stopAccepting() {
		for _, l := range s.listeners() {
			l.Close()
		}
		return
	}
	s.ln.Close()
}

// stopAccepting takes the listeners out of the event loops (connections
// then wait in their backlog) and closes done. It does nothing and
// reports false when a goroutine of its own accepts: that one stops only
// when its listener is closed.
func (s *service) stopAccepting() bool {
	if s.stopAccept == nil {
		return false
	}
	s.stopAccept()
	s.stopAccept = nil
	close(s.done)
	return true
}

// serviceState is everything a new connection needs, immutable once built.
type serviceState struct {
	cfg      config.Service
	maxConns int // open connections: the config's limit, or derived (package budget)
	maxFlows int // UDP flows: likewise
	// sendProxy is the PROXY protocol version each server gets; nil when
	// no server gets one.
	sendProxy  map[*server]config.ProxyProtocol
	servers    []*server
	byAddr     map[netip.AddrPort]*server
	sched      sched.Scheduler[*server]
	persistent bool
	ref        affinity.ServiceRef
	mask       affinity.Mask
	dialer     net.Dialer
	sorry      *server // sorry_server; nil without one
	// labels are the service's metric labels, and srvLabels each
	// server's: built once here, not per connection.
	labels    []metrics.Label
	srvLabels map[*server][]metrics.Label
	ev        *events // the service's event counters, kept across reloads
}

// serverLabels are srv's metric labels (service and server).
func (st *serviceState) serverLabels(srv *server) []metrics.Label {
	if l, ok := st.srvLabels[srv]; ok {
		return l
	}
	return append(st.labels[:1:1], metrics.Label{Name: "server", Value: srv.Addr.String()})
}

// buildState makes a service's state from its config, reusing the server
// objects of prev (so open-connection counts survive a reload) and
// registering the service and its servers with the table.
func buildState(cfg config.Service, prev *serviceState, table *affinity.Table, caps *budget.Caps) (*serviceState, error) {
	st := &serviceState{maxConns: caps.Conns[cfg.Key()], maxFlows: caps.Flows[cfg.Key()], cfg: cfg, byAddr: map[netip.AddrPort]*server{}, labels: []metrics.Label{{Name: "service", Value: cfg.Name}}, srvLabels: map[*server][]metrics.Label{}}
	st.ev = new(events)
	if prev != nil {
		st.ev = prev.ev
	}
	st.dialer.Timeout = cfg.Limits.ConnectTimeout.D()
	// No TCP keepalive by default, as HAProxy (option tcpka) and nginx
	// (so_keepalive): it costs four setsockopt calls per connection.
	st.dialer.KeepAlive = -1
	for _, sc := range cfg.Servers {
		addr := sc.Addr
		var s *server
		if prev != nil {
			s = prev.byAddr[addr]
		}
		if s == nil {
			s = newServer(addr, *sc.Weight)
			// keepalived's alpha: no client before the first checks pass.
			if hc := cfg.Check(sc); hc != nil && hc.Start == config.StartDown {
				s.down.Store(!cfg.InhibitOnFailure)
				s.inhibited.Store(cfg.InhibitOnFailure)
			}
		} else {
			s.weight.Store(int32(*sc.Weight))
			// What `tether server set` changed lasts until a reload.
			s.adminDown.Store(false)
			s.drained.Store(false)
		}
		s.conns.Set(cmp.Or(sc.MaxConnections, cfg.Limits.MaxConnectionsPerServer), sc.ResumeConnections)
		st.servers = append(st.servers, s)
		st.byAddr[addr] = s
		if v := cmp.Or(sc.SendProxy, cfg.SendProxy); v != "" {
			if st.sendProxy == nil {
				st.sendProxy = map[*server]config.ProxyProtocol{}
			}
			st.sendProxy[s] = v
		}
		st.srvLabels[s] = []metrics.Label{st.labels[0], {Name: "server", Value: addr.String()}}
	}
	if cfg.SorryServer != "" {
		addr := cfg.Sorry
		if prev != nil && prev.sorry != nil && prev.sorry.Addr == addr {
			st.sorry = prev.sorry
		} else {
			st.sorry = newServer(addr, 1)
		}
		if cfg.SendProxy != "" {
			if st.sendProxy == nil {
				st.sendProxy = map[*server]config.ProxyProtocol{}
			}
			st.sendProxy[st.sorry] = cfg.SendProxy
		}
	}
	sc, err := sched.New(sched.Name(cfg.Scheduler), st.servers)
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", cfg.Name, err)
	}
	st.sched = sc
	if ps := cfg.Persistence; ps != nil {
		st.persistent = true
		st.mask = ps.Mask
		st.ref = table.SetService(affinityID(cfg), affinity.ServiceConfig{
			Timeout: ps.Timeout.D(), Mask: st.mask, ExpireQuiescent: ps.ExpireQuiescent,
			MaxClientConns: uint32(ps.MaxClientConnections), Journal: cfg.Mode == config.ModeDirector, // the kernel template map follows it
		})
		for _, s := range st.servers {
			table.SetServer(st.ref, s.Addr, tableState(s))
		}
		if prev != nil && prev.persistent && prev.ref == st.ref {
			for addr := range prev.byAddr {
				if st.byAddr[addr] == nil {
					table.RemoveServer(st.ref, addr)
				}
			}
		}
	}
	return st, nil
}

// affinityID is the service's identity in the persistence table.
func affinityID(cfg config.Service) affinity.Service { return nft.TemplateID(cfg) }

// quorate reports whether the available servers' weights add up to the
// service's quorum (always, without one).
func (st *serviceState) quorate() bool {
	if st.cfg.Quorum == 0 {
		return true
	}
	total := 0
	for _, s := range st.servers {
		if !s.isDown() {
			total += s.Weight()
		}
	}
	return total >= st.cfg.Quorum
}

// rescheduled is st with a scheduler built for its servers' weights in
// force now, for when a weight changed without a reload.
func (st *serviceState) rescheduled() *serviceState {
	next := *st
	next.sched, _ = sched.New(sched.Name(st.cfg.Scheduler), st.servers) // the name was valid for st
	return &next
}

func tableState(s *server) affinity.ServerState {
	switch {
	case s.isDown() || s.failedUntil.Load() != 0:
		return affinity.ServerDown
	case s.Weight() == 0:
		return affinity.ServerQuiescent
	}
	return affinity.ServerUp
}

// conns tracks open connection pairs, so that a stop past its drain
// deadline can close them.
type conns struct {
	mu  sync.Mutex
	set map[*net.TCPConn]struct{}
	wg  sync.WaitGroup
}

func (c *conns) add(conn *net.TCPConn) {
	c.mu.Lock()
	if c.set == nil {
		c.set = map[*net.TCPConn]struct{}{}
	}
	c.set[conn] = struct{}{}
	c.mu.Unlock()
}

func (c *conns) remove(conn *net.TCPConn) {
	c.mu.Lock()
	delete(c.set, conn)
	c.mu.Unlock()
}

// closeAll closes every tracked connection; the sockets are collected
// under the lock and closed after it, so that no close waits on it.
func (c *conns) closeAll() {
	c.mu.Lock()
	all := slices.Collect(maps.Keys(c.set))
	c.mu.Unlock()
	for _, conn := range all {
		conn.Close()
	}
}
