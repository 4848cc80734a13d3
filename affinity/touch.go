package affinity

import (
	"net/netip"
)

// Touch counts a connection that opened and closed while this table was
// not told (the director's kernel template map served it; a conntrack
// scan found it closed): the template of (service, masked client) bound
// to server restarts its timer, as a Release would. An absent or expired
// template is bound to server, which the kernel already sent the client
// to; one bound elsewhere stays as it is (the connection was the
// kernel's). It reports whether the template is bound to server now.
//
// The change goes to the cluster (peers restart their timers too) and, for
// an idle template, to the director's kernel map (its element's timer
// restarts with the template's).
func (t *Table) Touch(ref ServiceRef, client netip.Addr, server netip.AddrPort) bool {
	r := t.reg.Load()
	svc, err := r.service(ref)
	if err != nil {
		return false
	}
	sv, ok := svc.index[netip.AddrPortFrom(server.Addr().Unmap(), server.Port())]
	if !ok || !svc.usable(sv) {
		return false
	}
	k := clientKey(ref, svc.cfg.Mask, client)
	h, sh := t.shardOf(k)
	now := t.nowTicks()

	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, ok := sh.get(k, h)
	if ok {
		e := &sh.ents[i]
		live, held := e.hold(now, svc.timeout)
		if held {
			defer e.thaw() // runs before the deferred unlock
		}
		switch {
		case live && uint32(e.server()) != sv && svc.usable(uint32(e.server())):
			return false
		case live && uint32(e.server()) == sv:
			sh.hits.Add(1)
			// An idle template already stamped this tick (closed or
			// touched: a conntrack scan touches it for every flow of
			// its client that closed since the last) has told the
			// kernel map what this touch would: the same element.
			told := e.stamp() == now
			e.raiseStamp(now)
			e.reference()
			to := uint8(0)
			if e.active() == 0 && !told {
				to |= toMirror
			}
			if e.local() == 0 {
				to |= toCluster
			}
			if to != 0 {
				sh.note(e, Idle, now, r, to)
			}
			return true
		}
		// Expired, or bound to a server no longer usable: bind anew.
		e.setServer(sv)
		e.raiseStamp(now)
		sh.stats.Binds++
		if e.active() == 0 {
			sh.note(e, Idle, now, r, toMirror|toCluster)
		} else {
			sh.note(e, Busy, now, r, toMirror|toCluster)
		}
		return true
	}
	i = sh.insert(k, h, sv, now, r)
	sh.stats.Binds++
	sh.note(&sh.ents[i], Idle, now, r, toMirror|toCluster)
	return true
}
