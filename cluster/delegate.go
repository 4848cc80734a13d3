package cluster

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"log/slog"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/tetherlb/tether/affinity"
)

// delegate is the Node as memberlist's Delegate: messages in, broadcasts
// out, full state both ways.
type delegate Node

func (d *delegate) NodeMeta(int) []byte { return nil }

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return (*Node)(d).q.GetBroadcasts(overhead, limit)
}

// NotifyMsg applies a peer's broadcast. memberlist calls it on its receive
// loop: it only decodes and takes a shard lock.
func (d *delegate) NotifyMsg(b []byte) {
	n := (*Node)(d)
	r := reader{b: b}
	kind, sender := r.header()
	switch {
	case r.err != nil:
	case sender == n.id: // its own, back from a peer
	case kind == kindTemplates:
		count := int(r.u16("template count"))
		body := r.off
		for i := 0; i < count && r.err == nil; i++ {
			r.record()
		}
		if r.end(); r.err == nil { // all of it checked: apply it
			n.st.received.Add(uint64(count))
			r = reader{b: b, off: body}
			for range count {
				n.apply(sender, r.record(), 0)
			}
		}
	case kind == kindInvalidate:
		inv := r.invalidation()
		if r.end(); r.err == nil && n.relay(b) {
			n.heard(sender)
			dropped := n.cfg.Table.Invalidate(inv.filter())
			n.log.Info("cluster: templates invalidated by a peer", "peer", n.peerName(sender), "dropped", dropped)
		}
	case kind == kindServer:
		service, server, ch := r.serverChange()
		if r.end(); r.err == nil && n.relay(b) {
			n.serverUpdate(sender, service, server, ch)
		}
	default:
		r.fail(fmt.Sprintf("message kind %d", kind))
	}
	if r.err != nil {
		n.refuse(r.err)
	}
}

// refuse counts and logs a message that is not one (a peer with another
// version, a bug, or garbage): it changes nothing.
func (n *Node) refuse(err error) {
	if d := n.st.dropped.Add(1); d&(d-1) == 0 { // the 1st, 2nd, 4th, 8th...: a flood cannot flood the log
		n.log.Warn("cluster: message refused", "err", err, "refused", d)
	}
}

// apply adopts a peer's template; merge is the full-state merge it is
// part of (0: a message).
func (n *Node) apply(sender uint32, rec record, merge uint64) affinity.Outcome {
	hk := holdKey{peer: sender, svc: rec.svc, client: rec.client}
	n.mu.Lock()
	h, held := n.holds[hk]
	if held && rec.busy && merge != 0 {
		h.seen = merge
		n.holds[hk] = h
	}
	// Only a member's connections hold a template here: a broadcast that
	// arrives after its sender left must not hold one forever.
	_, member := n.peers[sender]
	want := rec.busy && !held && member && len(n.holds) < n.cfg.MaxHolds
	n.heardLocked(sender)
	n.mu.Unlock()

	a := n.cfg.Table.Adopt(rec.svc, rec.client, rec.server, rec.left, want)

	var release []affinity.Lease
	n.mu.Lock()
	switch {
	case want && a.Lease != (affinity.Lease{}):
		_, dup := n.holds[hk]                             // the same template twice at once
		if _, member := n.peers[sender]; dup || !member { // or the sender left meanwhile
			release = append(release, a.Lease)
		} else {
			n.holds[hk] = hold{lease: a.Lease, seen: merge}
		}
	case !rec.busy && held:
		release = append(release, h.lease)
		delete(n.holds, hk)
	}
	n.mu.Unlock()
	for _, l := range release {
		n.cfg.Table.ReleasePeer(l)
	}
	if a.Outcome == affinity.Kept && merge == 0 {
		// This instance's server won: tell the peers, so they move too.
		n.queue(record{svc: rec.svc, client: rec.client, server: a.Server, busy: a.Active > 0, left: a.Left})
	}
	n.st.applied[a.Outcome].Add(1)
	return a.Outcome
}

// releaseHolds gives back the peers' holds that match selects, outside
// the node's lock, and returns how many.
func (n *Node) releaseHolds(match func(holdKey, hold) bool) int {
	var release []affinity.Lease
	n.mu.Lock()
	for k, h := range n.holds {
		if match(k, h) {
			release = append(release, h.lease)
			delete(n.holds, k)
		}
	}
	n.mu.Unlock()
	for _, l := range release {
		n.cfg.Table.ReleasePeer(l)
	}
	return len(release)
}

// events is the Node as memberlist's EventDelegate.
type events Node

func (e *events) NotifyJoin(m *memberlist.Node) {
	n := (*Node)(e)
	pid := id(m.Name)
	if pid == n.id {
		return
	}
	n.mu.Lock()
	if p := n.peers[pid]; p != nil && p.name != m.Name {
		n.log.Error("cluster: two instance names share one id; rename one", "names", []string{p.name, m.Name})
	}
	n.peers[pid] = &peer{name: m.Name, addr: m.Address(), heard: time.Now()}
	n.mu.Unlock()
	n.log.Info("cluster: instance joined", "peer", m.Name, "addr", m.Address())
}

// NotifyLeave gives back the templates the instance held open here: its
// connections are gone with it.
func (e *events) NotifyLeave(m *memberlist.Node) {
	n := (*Node)(e)
	pid := id(m.Name)
	n.mu.Lock()
	delete(n.peers, pid) // first: apply holds nothing more for it
	n.mu.Unlock()
	released := n.releaseHolds(func(k holdKey, _ hold) bool { return k.peer == pid })
	n.log.Info("cluster: instance left", "peer", m.Name, "released", released)
}

func (e *events) NotifyUpdate(*memberlist.Node) {}

func (n *Node) heard(sender uint32) {
	n.mu.Lock()
	n.heardLocked(sender)
	n.mu.Unlock()
}

func (n *Node) heardLocked(sender uint32) {
	if p := n.peers[sender]; p != nil {
		p.heard = time.Now()
	}
}

func (n *Node) peerName(sender uint32) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := n.peers[sender]; p != nil {
		return p.name
	}
	return fmt.Sprintf("%08x", sender)
}

// newLogLogger routes memberlist's log lines ("[WARN] memberlist: ...")
// to l at their level.
func newLogLogger(l *slog.Logger) *log.Logger {
	return log.New(logWriter{l}, "", 0)
}

type logWriter struct{ l *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	msg := string(bytes.TrimSpace(p))
	level := slog.LevelInfo
	for _, l := range [...]struct {
		prefix string
		level  slog.Level
	}{{"[DEBUG] ", slog.LevelDebug}, {"[INFO] ", slog.LevelInfo}, {"[WARN] ", slog.LevelWarn}, {"[ERR] ", slog.LevelError}} {
		if rest, ok := strings.CutPrefix(msg, l.prefix); ok {
			level, msg = l.level, rest
			break
		}
	}
	w.l.Log(context.Background(), level, msg)
	return len(p), nil
}
