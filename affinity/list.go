package affinity

import (
	"net/netip"
	"slices"
	"time"
)

// Template is one persistence template as `tether affinity ls` shows it.
type Template struct {
	Service Service
	// Client is the masked client: every address in it shares the template.
	Client netip.Prefix
	Server netip.AddrPort
	// Active is the number of open connections made through the template
	// by this instance.
	Active int
	// Peers is the number of other instances (the cluster) with
	// connections open through it.
	Peers int
	// Remaining is the time left before the template expires; while
	// connections are open it is the full timeout, which starts when the
	// last one closes.
	Remaining time.Duration
}

// Filter selects templates; each zero field selects all.
type Filter struct {
	// Service, when set, selects the templates of one service.
	Service *Service
	// Client selects the template this address falls into (it is masked
	// with each service's mask).
	Client netip.Addr
	// Server selects the templates bound to this real server.
	Server netip.AddrPort
	// UsedBefore, when set, selects only templates not used since then
	// (no new connection, no close): an invalidation a peer made at that
	// time spares the clients bound here after it (across a partition).
	UsedBefore time.Time
}

// matcher resolves a Filter against a registry into a predicate over
// entries that runs under a shard lock without allocating.
func (f Filter) matcher(r *registry, t *Table) func(*entry) bool {
	var cut uint32 // in ticks since t's epoch
	if !f.UsedBefore.IsZero() {
		cut = uint32(f.UsedBefore.Sub(t.epoch) / tick)
	}
	svc := uint32(len(r.svcs)) // matches nothing unless found
	if f.Service != nil {
		if ref, ok := r.byID[*f.Service]; ok {
			svc = uint32(ref)
		}
	}
	var clients []key // the client's key in each service, by index
	if f.Client.IsValid() {
		clients = make([]key, len(r.svcs))
		for i, s := range r.svcs {
			clients[i] = clientKey(ServiceRef(i), s.cfg.Mask, f.Client)
		}
	}
	server := netip.AddrPortFrom(f.Server.Addr().Unmap(), f.Server.Port())
	return func(e *entry) bool {
		if !f.UsedBefore.IsZero() && int32(e.stamp()-cut) >= 0 {
			return false
		}
		if f.Service != nil && uint32(e.svc()) != svc {
			return false
		}
		if clients != nil && !e.is(clients[e.svc()]) {
			return false
		}
		if f.Server.IsValid() && r.svcs[e.svc()].servers[e.server()] != server {
			return false
		}
		return true
	}
}

// live calls fn, under each shard's lock, for every live template that f
// selects, with its service and the time it has left.
func (t *Table) live(f Filter, fn func(s *serviceInfo, e *entry, rem time.Duration)) {
	r := t.reg.Load()
	match := f.matcher(r, t)
	now := t.nowTicks()
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for j := range sh.ents {
			e := &sh.ents[j]
			if e.empty() || !match(e) {
				continue
			}
			s := r.svcs[e.svc()]
			if rem := s.remaining(e, now); rem > 0 {
				fn(s, e, rem)
			}
		}
		sh.mu.Unlock()
	}
}

// remaining is the time template e of service s has left at now; 0 or
// less: expired (or its service removed).
func (s *serviceInfo) remaining(e *entry, now uint32) time.Duration {
	if s.removed {
		return 0
	}
	rem := time.Duration(s.timeout) * tick
	if e.active() == 0 {
		// A release between reading the clock and taking the shard's
		// lock stamps after now: that is "just used", not more than the
		// timeout.
		if age := int32(e.age(now)); age > 0 {
			rem -= time.Duration(age) * tick
		}
	}
	return rem
}

// template is e as a Template, with rem left.
func (s *serviceInfo) template(e *entry, rem time.Duration) Template {
	c := e.key().client()
	bits := s.cfg.Mask.Bits6()
	if c.Is4() {
		bits = s.cfg.Mask.Bits4()
	}
	return Template{
		Service: s.id, Client: netip.PrefixFrom(c, bits),
		Server: s.servers[e.server()], Active: int(e.local()), Peers: int(e.peers()), Remaining: rem,
	}
}

// List returns the live templates that f selects, sorted by service, then
// client.
func (t *Table) List(f Filter) []Template {
	var out []Template
	t.live(f, func(s *serviceInfo, e *entry, rem time.Duration) {
		out = append(out, s.template(e, rem))
	})
	slices.SortFunc(out, func(a, b Template) int {
		if c := compareService(a.Service, b.Service); c != 0 {
			return c
		}
		return a.Client.Addr().Compare(b.Client.Addr())
	})
	return out
}

// Counts is the number of live templates of each service, without
// building the list (tether ls asks for it on a table of millions).
func (t *Table) Counts() map[Service]int {
	n := map[*serviceInfo]int{}
	t.live(Filter{}, func(s *serviceInfo, _ *entry, _ time.Duration) { n[s]++ })
	out := make(map[Service]int, len(n))
	for s, c := range n {
		out[s.id] += c
	}
	return out
}

func compareService(a, b Service) int {
	switch {
	case a.Mark != b.Mark:
		return cmpInt(a.Mark, b.Mark)
	case a.Proto != b.Proto:
		return cmpInt(a.Proto, b.Proto)
	case a.Addr != b.Addr:
		return a.Addr.Compare(b.Addr)
	}
	return cmpInt(a.Port, b.Port)
}

func cmpInt[T ~uint8 | ~uint16 | ~uint32](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Invalidate drops the templates f selects (all of them for a zero Filter),
// so their clients are rescheduled on their next connection. It returns how
// many went. Open connections are not touched.
func (t *Table) Invalidate(f Filter) int {
	return t.invalidate(f.matcher(t.reg.Load(), t))
}

// Stats are the table's counters since it was made.
type Stats struct {
	Templates     int // held now, including expired ones not yet swept
	Hits          uint64
	Misses        uint64
	Binds         uint64
	Expirations   uint64
	Evictions     uint64
	Invalidations uint64
	ClientLimited uint64 // connections refused by MaxClientConns
}

// Stats sums the counters of all shards.
func (t *Table) Stats() Stats {
	var s Stats
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		c := sh.stats
		s.Templates += sh.n
		sh.mu.Unlock()
		s.Hits += sh.hits.Load()
		s.Misses += c.Misses
		s.Binds += c.Binds
		s.Expirations += c.Expirations
		s.Evictions += c.Evictions
		s.Invalidations += c.Invalidations
		s.ClientLimited += c.ClientLimited
	}
	return s
}
