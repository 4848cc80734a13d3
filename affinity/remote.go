package affinity

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/tetherlb/tether/internal/fmix"
)

// Templates from other instances (the cluster): Adopt applies what a peer
// says about one of its templates, with one conflict rule, so that every
// instance ends on the same server for a client whatever order the peers'
// messages arrive in.

// Outcome is what Adopt did with a peer's template.
type Outcome uint8

const (
	// Added: the table had no template for the client; it has the peer's.
	Added Outcome = iota + 1
	// Same: the table's template already named the peer's server; its
	// timer was refreshed.
	Same
	// Replaced: the table's template named another server, which lost to
	// the peer's by the conflict rule (or was unusable here).
	Replaced
	// Kept: the table's server won by the conflict rule; the peer should
	// hear of it (Adopt returns it).
	Kept
	// Ignored: the service or server is not configured here.
	Ignored
)

func (o Outcome) String() string {
	switch o {
	case Added:
		return "added"
	case Same:
		return "same"
	case Replaced:
		return "replaced"
	case Kept:
		return "kept"
	case Ignored:
		return "ignored"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Score is the conflict rule's rank of server for a masked client: a
// rendezvous hash of both, the same on every instance. When two instances
// bound one client to different usable servers, the server with the
// higher score wins everywhere. Taking the larger of two scores is
// commutative, associative and idempotent, so the instances converge
// whatever the order, repetition or loss of messages (a later full-state
// exchange repairs a loss).
func Score(client netip.Addr, server netip.AddrPort) uint64 {
	c := client.Unmap().As16()
	s := server.Addr().Unmap().As16()
	h := fmix.Mix64(binary.LittleEndian.Uint64(c[:8]) ^ 0x9e3779b97f4a7c15)
	h = fmix.Mix64(h ^ binary.LittleEndian.Uint64(c[8:]))
	h = fmix.Mix64(h ^ binary.LittleEndian.Uint64(s[:8]))
	h = fmix.Mix64(h ^ binary.LittleEndian.Uint64(s[8:]))
	return fmix.Mix64(h ^ uint64(server.Port()))
}

// Adopted is what Adopt did, and the template as it is afterwards.
type Adopted struct {
	Outcome Outcome
	// Lease is the peer's hold (with hold), for ReleasePeer.
	Lease  Lease
	Server netip.AddrPort
	// Active is this instance's own open connections through it, and Left
	// its time left (the full timeout while any are open).
	Active int
	Left   time.Duration
}

// Adopt applies a peer's template: client (masked with this table's mask
// for the service) to server, with left of its timeout left at the peer
// (the full timeout while the peer has connections open through it). A
// template absent here is added; one naming another server is resolved by
// Score (a server unusable here always loses); a surviving template's
// timer restarts no earlier than the peer's. With hold, the template also
// counts the peer's open connections, so that it does not expire here
// while they last: the returned Lease goes back to ReleasePeer when the
// peer says they closed or the peer leaves.
func (t *Table) Adopt(svc Service, client netip.Addr, server netip.AddrPort, left time.Duration, hold bool) Adopted {
	r := t.reg.Load()
	ref, ok := r.byID[svc]
	if !ok || r.svcs[ref].removed {
		return Adopted{Outcome: Ignored}
	}
	s := r.svcs[ref]
	sv, ok := s.index[netip.AddrPortFrom(server.Addr().Unmap(), server.Port())]
	if !ok || !s.usable(sv) {
		return Adopted{Outcome: Ignored}
	}
	masked := s.cfg.Mask.Apply(client)
	k := makeKey(ref, masked)
	h, sh := t.shardOf(k)
	now := t.nowTicks()
	idle := s.timeout - min(ticks(max(left, 0)), s.timeout)
	stamp := now - idle

	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, ok := sh.get(k, h)
	var out Outcome
	switch {
	case !ok:
		// insert ages the templates it may evict against now; the new
		// one then takes the peer's timer.
		i = sh.insert(k, h, sv, now, r)
		sh.ents[i].setStamp(stamp)
		sh.stats.Binds++
		out = Added
	default:
		e := &sh.ents[i]
		live, held := e.hold(now, s.timeout)
		if held {
			defer e.thaw() // runs before the deferred unlock
		}
		switch {
		case uint32(e.server()) == sv:
			out = Same
		case !live || !s.usable(uint32(e.server())) || Score(masked, server) > Score(masked, s.servers[e.server()]):
			e.setServer(sv)
			sh.stats.Binds++
			if e.active() > 0 {
				sh.note(e, Busy, now, r, toMirror)
			}
			out = Replaced
		default:
			out = Kept
		}
		if !live {
			e.setStamp(stamp)
		} else {
			e.raiseStamp(stamp)
		}
	}
	e := &sh.ents[i]
	var l Lease
	if hold && e.peers() < maxPeers {
		sh.open(i, now, false, true, r)
		l = Lease{srv: &s.servers[e.server()], h: h, at: leaseAt(i, e.generation())}
	} else if out == Added || e.active() == 0 {
		// Tell the director's kernel map of the new timer.
		sh.note(e, Idle, e.stamp(), r, toMirror)
	}
	return Adopted{Outcome: out, Lease: l, Server: s.servers[e.server()], Active: int(e.local()), Left: s.remaining(e, now)}
}

// ReleasePeer gives back a Lease that Adopt returned for a peer's open
// connections, when the peer says they closed or the peer is gone. Unlike
// Release, the change is not reported to the cluster's follower: it came
// from a peer.
func (t *Table) ReleasePeer(l Lease) {
	if l.at == 0 {
		return
	}
	t.shardAt(l.h).releaseLocked(t, l.h, l.slot(), l.gen(), t.nowTicks(), true)
}

// Export copies up to cap(dst) live templates into dst[:0], from cursor
// on (0: the start), and returns them with the cursor to go on from; the
// next cursor is 0 after the last. It holds one shard's lock at a time and
// calls nothing under it, for a full-state exchange of any size in
// bounded memory. Templates that move or change between calls may be
// missed or seen twice.
func (t *Table) Export(cursor uint64, dst []Template) ([]Template, uint64) {
	dst = dst[:0]
	if cap(dst) == 0 {
		return dst, 0
	}
	r := t.reg.Load()
	now := t.nowTicks()
	for si := int(cursor >> 32); si < len(t.shards); si, cursor = si+1, uint64(si+1)<<32 {
		sh := &t.shards[si]
		sh.mu.Lock()
		j := int(uint32(cursor))
		for ; j < len(sh.ents) && len(dst) < cap(dst); j++ {
			e := &sh.ents[j]
			if e.empty() {
				continue
			}
			s := r.svcs[e.svc()]
			if rem := s.remaining(e, now); rem > 0 {
				dst = append(dst, s.template(e, rem))
			}
		}
		done := j >= len(sh.ents)
		sh.mu.Unlock()
		switch {
		case len(dst) < cap(dst):
		case !done:
			return dst, uint64(si)<<32 | uint64(j)
		case si+1 < len(t.shards):
			return dst, uint64(si+1) << 32
		default:
			return dst, 0
		}
	}
	return dst, 0
}
