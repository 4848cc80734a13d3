package affinity

import (
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

// change is a Change as the ring keeps it (no pointers, 28 bytes).
type change struct {
	addr   [16]byte
	svc    uint16
	server uint16
	kind   ChangeKind
	stamp  uint32
}

// journal is a shard's ring of changes.
type journal struct {
	ring []change // nil: not following
	head int      // the oldest change
	n    int
	lost bool // a change did not fit since the last drain
	wake chan struct{}
}

// note records a change of template e when its service keeps a journal,
// and wakes the follower.
func (sh *shard) note(e *entry, kind ChangeKind, now uint32, r *registry) {
	j := &sh.jr
	if j.ring == nil || !r.svcs[e.svc].cfg.Journal {
		return
	}
	if j.n == len(j.ring) {
		j.lost = true
	} else {
		j.ring[(j.head+j.n)%len(j.ring)] = change{addr: e.addr, svc: e.svc, server: e.server, kind: kind, stamp: now}
		j.n++
	}
	select { // a wake-up, not a call: the follower drains outside the lock
	case j.wake <- struct{}{}:
	default:
	}
}

// Follow starts (perShard > 0) or stops (0) recording the changes of
// journaled services, at most perShard per shard between two drains. The
// returned channel receives a value when there may be changes to drain.
func (t *Table) Follow(perShard int) <-chan struct{} {
	wake := make(chan struct{}, 1)
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		sh.jr = journal{wake: wake}
		if perShard > 0 {
			sh.jr.ring = make([]change, perShard)
		}
		sh.mu.Unlock()
	}
	return wake
}

// Changes appends the recorded changes to dst, oldest first within a
// template, and forgets them. lost says some did not fit in a ring since
// the last call: the follower must then rebuild from List.
func (t *Table) Changes(dst []Change) (out []Change, lost bool) {
	var raw []change
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		j := &sh.jr
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
		ch := Change{Kind: c.kind, Service: s.id, Client: netip.AddrFrom16(c.addr).Unmap(), At: t.epoch.Add(time.Duration(c.stamp) * tick)}
		if c.kind != Dropped && int(c.server) < len(s.servers) {
			ch.Server = s.servers[c.server]
		}
		if c.kind == Idle {
			ch.Timeout = time.Duration(s.timeout) * tick
		}
		out = append(out, ch)
	}
	return out, lost
}

// Since is the time from at to now on the table's clock (Change.At).
func (t *Table) Since(at time.Time) time.Duration { return t.now().Sub(at) }
