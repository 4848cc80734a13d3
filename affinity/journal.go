package affinity

import (
	"fmt"
	"net/netip"
	"time"
)

// The journal: a table can record, per shard, the changes of templates of
// services with ServiceConfig.Journal, for a mirror of the table (the
// director's kernel map) to follow. A change is recorded under its shard's
// lock, so the changes of one template come out in the order they were
// made; Changes drains them. A shard's ring is bounded: when it overflows,
// Changes says so, and the follower rebuilds its mirror from List.

// ChangeKind is what happened to a template.
type ChangeKind uint8

const (
	// Busy: the template has open connections now (its first one, or it
	// was bound or rebound to Server). It does not expire while busy.
	Busy ChangeKind = iota + 1
	// Idle: its last connection closed; it expires Timeout from then
	// unless a client comes back.
	Idle
	// Dropped: it is gone (evicted, invalidated, expired, its service
	// removed).
	Dropped
)

// Change is one template's change.
type Change struct {
	Kind    ChangeKind
	Service Service
	Client  netip.Addr     // the masked client
	Server  netip.AddrPort // Busy and Idle
	// Timeout is, for Idle, the time the template has left from At.
	Timeout time.Duration
	At      time.Time // when it happened, to the tick
}

// change is a Change as the ring keeps it (no pointers, 32 bytes).
type change struct {
	hi, lo uint64
	svc    uint16
	server uint16
	kind   ChangeKind
	stamp  uint32
}

// journal is a shard's ring of changes for one follower. The ring starts
// at ringStart changes and doubles as a burst needs, up to max: a
// follower's limit is for the burst between two drains, and a director
// that drains every few milliseconds would otherwise hold the whole limit
// (1 MiB for the kernel map's 32768) for nothing.
type journal struct {
	ring []change // nil: not following
	max  int      // the ring's bound, the follower's share of its limit
	head int      // the oldest change
	n    int
	lost bool // a change did not fit since the last drain
	all  bool // every service's changes, not only journaled ones
	wake chan struct{}
}

// ringStart is the changes a shard's ring holds before it first grows.
const ringStart = 8

// maxFollowers is how many followers a table has at once: the director's
// kernel mirror and the cluster.
const maxFollowers = 2

// Recipients of a change: the followers of journaled services (the
// director's kernel mirror), and those of every service (the cluster),
// which hear of this instance's own connections only.
const (
	toMirror uint8 = 1 << iota
	toCluster
)

// note records a change of template e for each follower among to that
// wants it, and wakes them.
func (sh *shard) note(e *entry, kind ChangeKind, now uint32, r *registry, to uint8) {
	for f := range sh.jr {
		j := &sh.jr[f]
		switch {
		case j.ring == nil:
			continue
		case j.all && to&toCluster == 0:
			continue
		case !j.all && (to&toMirror == 0 || !r.svcs[e.svc()].cfg.Journal):
			continue
		}
		if j.n == len(j.ring) && len(j.ring) < j.max {
			j.grow()
		}
		if j.n == len(j.ring) {
			j.lost = true
		} else {
			j.ring[(j.head+j.n)%len(j.ring)] = change{hi: e.hi.Load(), lo: e.lo.Load(), svc: e.svc(), server: e.server(), kind: kind, stamp: now}
			j.n++
		}
		select { // a wake-up, not a call: the follower drains outside the lock
		case j.wake <- struct{}{}:
		default:
		}
	}
}

// grow doubles the ring, up to max, keeping its changes in order.
func (j *journal) grow() {
	ring := make([]change, min(2*len(j.ring), j.max))
	for k := 0; k < j.n; k++ {
		ring[k] = j.ring[(j.head+k)%len(j.ring)]
	}
	j.ring, j.head = ring, 0
}

// Follower receives a table's template changes: those of services with
// ServiceConfig.Journal, or of every service.
type Follower struct {
	t    *Table
	slot int
	wake chan struct{}
	raw  []change // Changes' buffer, reused
}

// ErrFollowers says a table has maxFollowers followers already.
var ErrFollowers = fmt.Errorf("affinity: at most %d journal followers", maxFollowers)

// Follow starts recording the changes of journaled services (all: of every
// service), about limit between two drains: each shard keeps its share,
// limit/shards rounded up (keys spread evenly over shards), in a ring that
// grows to that share as changes come. Close stops it.
func (t *Table) Follow(limit int, all bool) (*Follower, error) {
	perShard := (limit + len(t.shards) - 1) / len(t.shards)
	t.followMu.Lock()
	defer t.followMu.Unlock()
	slot := -1
	for i, kind := range t.followers {
		if kind == 0 {
			slot = i
			break
		}
	}
	if slot < 0 {
		return nil, ErrFollowers
	}
	t.followers[slot] = watchMirror
	if all {
		t.followers[slot] = watchAll
	}
	// Before the rings: from here on, lock-free changes that a follower
	// must hear of take the lock (fast.go).
	t.watch()
	f := &Follower{t: t, slot: slot, wake: make(chan struct{}, 1)}
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		n := max(perShard, 1)
		sh.jr[slot] = journal{wake: f.wake, all: all, max: n, ring: make([]change, min(n, ringStart))}
		sh.mu.Unlock()
	}
	return f, nil
}

// Wake receives a value when there may be changes to drain.
func (f *Follower) Wake() <-chan struct{} { return f.wake }

// Close stops recording and frees the rings.
func (f *Follower) Close() {
	for i := range f.t.shards {
		sh := &f.t.shards[i]
		sh.mu.Lock()
		sh.jr[f.slot] = journal{}
		sh.mu.Unlock()
	}
	f.t.followMu.Lock()
	f.t.followers[f.slot] = 0
	f.t.watch()
	f.t.followMu.Unlock()
}

// watch publishes the kinds of followers there are; under followMu.
func (t *Table) watch() {
	w := uint32(0)
	for _, kind := range t.followers {
		w |= kind
	}
	t.watched.Store(w)
}

// Changes appends the recorded changes to dst, oldest first within a
// template, and forgets them. One goroutine calls it (it reuses a buffer). lost says some did not fit in a ring since
// the last call: the follower must then rebuild from List.
func (f *Follower) Changes(dst []Change) (out []Change, lost bool) {
	t := f.t
	raw := f.raw[:0]
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		j := &sh.jr[f.slot]
		for k := 0; k < j.n; k++ {
			raw = append(raw, j.ring[(j.head+k)%len(j.ring)])
		}
		j.head, j.n = 0, 0
		lost = lost || j.lost
		j.lost = false
		sh.mu.Unlock()
	}
	r := t.reg.Load()
	out = dst
	for _, c := range raw {
		if int(c.svc) >= len(r.svcs) {
			continue
		}
		s := r.svcs[c.svc]
		ch := Change{Kind: c.kind, Service: s.id, Client: netip.AddrFrom16(addr16(c.hi, c.lo)).Unmap(), At: t.epoch.Add(time.Duration(c.stamp) * tick)}
		if c.kind != Dropped && int(c.server) < len(s.servers) {
			ch.Server = s.servers[c.server]
		}
		if c.kind == Idle {
			ch.Timeout = time.Duration(s.timeout) * tick
		}
		out = append(out, ch)
	}
	f.raw = raw
	return out, lost
}

// Since is the time from at to now on the table's clock (Change.At).
func (t *Table) Since(at time.Time) time.Duration { return t.now().Sub(at) }
