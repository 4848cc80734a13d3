package affinity

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"
)

// DefaultTimeout is ipvsadm's persistence timeout.
const DefaultTimeout = 300 * time.Second

// ServiceConfig is a service's persistence setting. The zero value is
// ipvsadm's default: 300 s, one template per client address.
type ServiceConfig struct {
	// Timeout is how long a template outlives its last connection.
	// Zero means DefaultTimeout. A change applies to existing templates.
	Timeout time.Duration
	// Mask groups clients; the zero value is /32 and /128.
	Mask Mask
	// ExpireQuiescent drops templates bound to a weight-0 server instead of
	// honouring them (IPVS's expire_quiescent_template).
	ExpireQuiescent bool
	// MaxClientConns bounds the open connections (and UDP flows) of one
	// template, that is of one masked client group: GetOrBind refuses one
	// more with ErrClientLimit (HAProxy's sc_conn_cur against a limit).
	// Zero: no limit.
	MaxClientConns uint32
	// Journal records the service's template changes for Changes (the
	// director mirrors them into the kernel); other services pay nothing.
	Journal bool
}

func (c ServiceConfig) timeout() time.Duration {
	if c.Timeout <= 0 {
		return DefaultTimeout
	}
	return c.Timeout
}

// ServerState is what the table knows of a real server when it decides
// whether a template bound to it still holds.
type ServerState uint8

// Server states. Only ServerUp takes new clients; that is the scheduler's
// business. The table honours templates on ServerUp and on ServerQuiescent
// (weight 0) unless the service has ExpireQuiescent.
const (
	ServerUp ServerState = iota
	ServerQuiescent
	ServerDown
	ServerGone
)

func (s ServerState) String() string {
	switch s {
	case ServerUp:
		return "up"
	case ServerQuiescent:
		return "quiescent"
	case ServerDown:
		return "down"
	case ServerGone:
		return "gone"
	}
	return fmt.Sprintf("ServerState(%d)", uint8(s))
}

// ServiceRef is a registered service, returned by Table.SetService. It stays
// valid for the table's life, also across RemoveService and SetService of the
// same identity.
type ServiceRef uint32

// Errors a lookup can return.
var (
	ErrUnknownService = errors.New("affinity: service is not registered")
	ErrUnknownServer  = errors.New("affinity: server is not registered with the service")
	// ErrClientLimit: the client group already has its service's
	// MaxClientConns connections open.
	ErrClientLimit = errors.New("the client has its service's max_client_connections open")
)

type serviceInfo struct {
	id      Service
	cfg     ServiceConfig
	timeout uint32 // ticks, resolved from cfg
	removed bool
	servers []netip.AddrPort
	states  []ServerState
	index   map[netip.AddrPort]uint32
}

// full says e has its service's MaxClientConns connections open.
func (s *serviceInfo) full(local uint32) bool {
	return s.cfg.MaxClientConns > 0 && local >= s.cfg.MaxClientConns || local == localMask
}

func (s *serviceInfo) usable(server uint32) bool {
	switch s.states[server] {
	case ServerUp:
		return true
	case ServerQuiescent:
		return !s.cfg.ExpireQuiescent
	}
	return false
}

func (s *serviceInfo) clone() *serviceInfo {
	c := *s
	c.servers = slices.Clone(s.servers)
	c.states = slices.Clone(s.states)
	c.index = maps.Clone(s.index)
	return &c
}

// registry is immutable once published: lookups read it without a lock and
// writers (reloads, health checks: rare) publish a modified copy.
type registry struct {
	svcs []*serviceInfo
	byID map[Service]ServiceRef
}

func (r *registry) service(ref ServiceRef) (*serviceInfo, error) {
	if int(ref) >= len(r.svcs) || r.svcs[ref].removed {
		return nil, ErrUnknownService
	}
	return r.svcs[ref], nil
}

// reusable is a removed service's index, for when every index is taken.
func (r *registry) reusable() ServiceRef {
	for i, s := range r.svcs {
		if s.removed {
			return ServiceRef(i)
		}
	}
	panic("affinity: 65535 services registered at once")
}

func (r *registry) clone() *registry {
	return &registry{svcs: slices.Clone(r.svcs), byID: maps.Clone(r.byID)}
}

func (r *registry) finish() *registry { return r }

// maxIndex bounds service and server indexes: a template keeps each in 16
// bits. Past it a removed service's (or gone server's) index is reused;
// its templates went when it was removed.
const maxIndex = 1<<16 - 1

// SetService registers a service or changes its persistence setting; a
// changed timeout or mask applies to the templates it already has (a changed
// mask makes them unreachable, so they are dropped).
func (t *Table) SetService(s Service, c ServiceConfig) ServiceRef {
	t.regMu.Lock()
	defer t.regMu.Unlock()
	r := t.reg.Load().clone()
	ref, ok := r.byID[s]
	var old *serviceInfo
	if ok {
		old = r.svcs[ref]
		n := old.clone()
		n.cfg, n.timeout, n.removed = c, ticks(c.timeout()), false
		r.svcs[ref] = n
	} else {
		info := &serviceInfo{id: s, cfg: c, timeout: ticks(c.timeout()), index: map[netip.AddrPort]uint32{}}
		ref = ServiceRef(len(r.svcs))
		if len(r.svcs) >= maxIndex {
			ref = r.reusable()
			delete(r.byID, r.svcs[ref].id)
			r.svcs[ref] = info
		} else {
			r.svcs = append(r.svcs, info)
		}
		r.byID[s] = ref
	}
	t.reg.Store(r.finish())
	if old != nil && old.cfg.Mask != c.Mask {
		t.invalidate(func(e *entry) bool { return uint32(e.svc()) == uint32(ref) })
	}
	if old != nil && c.ExpireQuiescent && !old.cfg.ExpireQuiescent {
		t.invalidateUnusable(ref)
	}
	return ref
}

// Lookup returns the ref of a registered service.
func (t *Table) Lookup(s Service) (ServiceRef, bool) {
	r := t.reg.Load()
	ref, ok := r.byID[s]
	return ref, ok && !r.svcs[ref].removed
}

// RemoveService drops a service and all its templates.
func (t *Table) RemoveService(ref ServiceRef) int {
	if !t.updateService(ref, func(s *serviceInfo) { s.removed = true }) {
		return 0
	}
	return t.invalidate(func(e *entry) bool { return uint32(e.svc()) == uint32(ref) })
}

// SetServer registers a real server with a service or changes its state.
// ServerDown and ServerGone invalidate its templates, so its clients are
// rescheduled; ServerQuiescent does when the service has ExpireQuiescent.
func (t *Table) SetServer(ref ServiceRef, server netip.AddrPort, st ServerState) error {
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	ok := t.updateService(ref, func(s *serviceInfo) {
		i, ok := s.index[server]
		if !ok {
			i = uint32(len(s.servers))
			if i >= maxIndex { // reuse a gone server's index
				i = uint32(slices.Index(s.states, ServerGone))
				delete(s.index, s.servers[i])
				s.servers[i] = server
			} else {
				s.servers = append(s.servers, server)
				s.states = append(s.states, st)
			}
			s.index[server] = i
		}
		s.states[i] = st
	})
	if !ok {
		return ErrUnknownService
	}
	t.invalidateUnusable(ref)
	return nil
}

// RemoveServer is SetServer(ref, server, ServerGone): its templates go.
func (t *Table) RemoveServer(ref ServiceRef, server netip.AddrPort) error {
	return t.SetServer(ref, server, ServerGone)
}

func (t *Table) updateService(ref ServiceRef, f func(*serviceInfo)) bool {
	t.regMu.Lock()
	defer t.regMu.Unlock()
	r := t.reg.Load()
	if int(ref) >= len(r.svcs) {
		return false
	}
	r = r.clone()
	n := r.svcs[ref].clone()
	f(n)
	r.svcs[ref] = n
	t.reg.Store(r.finish())
	return true
}

func (t *Table) invalidateUnusable(ref ServiceRef) int {
	s := t.reg.Load().svcs[ref]
	return t.invalidate(func(e *entry) bool {
		return uint32(e.svc()) == uint32(ref) && !s.usable(uint32(e.server()))
	})
}
