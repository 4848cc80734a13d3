package cluster

import (
	"encoding/binary"
	"hash/fnv"
	"net/netip"
	"sync"

	"github.com/hashicorp/memberlist"
	"github.com/tetherlb/tether/affinity"
)

// broadcastChanges queues this instance's template changes for its peers.
func (n *Node) broadcastChanges(changes []affinity.Change) {
	for _, c := range changes {
		rec := record{svc: c.Service, client: c.Client, server: c.Server, busy: c.Kind == affinity.Busy}
		switch c.Kind {
		case affinity.Busy:
		case affinity.Idle:
			rec.left = c.Timeout - n.cfg.Table.Since(c.At)
		default:
			continue // expiry and eviction are each instance's own
		}
		n.queue(rec)
	}
}

// queue puts a template of this instance's in the outbox; a newer state
// of a template replaces one not yet sent.
func (n *Node) queue(rec record) {
	k := outKey{svc: rec.svc, client: rec.client}
	n.out.mu.Lock()
	defer n.out.mu.Unlock()
	if i, ok := n.out.index[k]; ok {
		n.out.recs[i] = rec
		return
	}
	if len(n.out.recs) >= n.cfg.QueueDepth {
		n.st.pruned.Add(1) // the next full-state exchange carries it
		return
	}
	if n.out.index == nil {
		n.out.index = map[outKey]int{}
	}
	n.out.index[k] = len(n.out.recs)
	n.out.recs = append(n.out.recs, rec)
	n.st.queued.Add(1)
}

// outbox holds this instance's template changes until the next flush.
type outbox struct {
	mu    sync.Mutex
	recs  []record
	spare []record // the other buffer, while a flush encodes recs
	index map[outKey]int
	pkts  [][]byte // flush's messages (only flush, on run, uses them)
}

type outKey struct {
	svc    affinity.Service
	client netip.Addr
}

// maxPacket bounds a templates message: memberlist sends it in one UDP
// packet (1400 bytes), with its label and encryption around it.
const maxPacket = 1200

// flush sends the outbox to every other member, in messages of up to
// maxPacket bytes. Each instance sends its own changes to all: memberlist's
// broadcast queue sends each message to a few random members only, and
// lost 2 templates of 200 that way in the ECMP test, even with relays;
// direct sends reach every member that is up, and the full-state
// exchange repairs a lost packet.
func (n *Node) flush() {
	n.out.mu.Lock()
	recs := n.out.recs
	n.out.recs, n.out.spare = n.out.spare[:0], nil
	clear(n.out.index)
	n.out.mu.Unlock()
	if len(recs) == 0 {
		n.out.mu.Lock()
		n.out.spare = recs
		n.out.mu.Unlock()
		return
	}
	all := recs
	msgs := n.out.pkts[:0]
	for len(recs) > 0 {
		i := len(msgs)
		if i < cap(msgs) {
			msgs = msgs[:i+1]
		} else {
			msgs = append(msgs, make([]byte, 0, maxPacket))
		}
		b := appendHeader(msgs[i][:0], kindTemplates, n.id)
		b = append(b, 0, 0)
		count := 0
		for len(recs) > 0 && len(b)+maxRecord <= maxPacket {
			b = appendRecord(b, recs[0])
			recs = recs[1:]
			count++
		}
		binary.BigEndian.PutUint16(b[headerLen:], uint16(count))
		msgs[i] = b
	}
	n.out.pkts = msgs // memberlist copies what it sends: the buffers serve again
	n.out.mu.Lock()
	n.out.spare = all[:0]
	n.out.mu.Unlock()
	for _, m := range n.ml.Members() {
		if m.Name == n.cfg.Name {
			continue
		}
		for _, b := range msgs {
			if err := n.ml.SendBestEffort(m, b); err != nil {
				n.st.sendErrors.Add(1)
			} else {
				n.st.sent.Add(1)
			}
		}
	}
}

// bound drops the oldest broadcasts (invalidations) beyond QueueDepth.
func (n *Node) bound() {
	if q := n.q.NumQueued(); q > n.cfg.QueueDepth {
		n.q.Prune(n.cfg.QueueDepth)
		n.st.pruned.Add(uint64(q - n.cfg.QueueDepth))
	}
}

// broadcast sends msg (an invalidation or a server change: rare, and
// each unique) through memberlist's queue, remembered so that it is
// relayed once; relay passes on a peer's the same way, unless seen.
func (n *Node) broadcast(msg []byte) {
	n.seenBefore(msg)
	n.q.QueueBroadcast(&uniqueBroadcast{msg: msg})
	n.st.queued.Add(1)
	n.bound()
}

// relay is broadcast of a peer's message, once: it says false when the
// message was seen before (then the caller applies nothing).
func (n *Node) relay(msg []byte) bool {
	if n.seenBefore(msg) {
		return false
	}
	n.q.QueueBroadcast(&uniqueBroadcast{msg: append([]byte(nil), msg...)})
	n.st.received.Add(1)
	n.bound()
	return true
}

// uniqueBroadcast is an invalidation or a server change: it replaces
// nothing.
type uniqueBroadcast struct{ msg []byte }

func (b *uniqueBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b *uniqueBroadcast) Message() []byte                       { return b.msg }
func (b *uniqueBroadcast) Finished()                             {}
func (b *uniqueBroadcast) UniqueBroadcast()                      {}

// seenSet remembers the last seenMax broadcasts (by a hash of the
// message), so that each instance relays one only once.
type seenSet struct {
	set  map[uint64]struct{}
	ring [seenMax]uint64
	next int
}

const seenMax = 4096

// seenBefore says msg was seen before, and remembers it.
func (n *Node) seenBefore(msg []byte) bool {
	h := fnv.New64a()
	h.Write(msg)
	k := h.Sum64()
	n.mu.Lock()
	defer n.mu.Unlock()
	s := &n.seen
	if s.set == nil {
		s.set = map[uint64]struct{}{}
	}
	if _, ok := s.set[k]; ok {
		return true
	}
	delete(s.set, s.ring[s.next])
	s.ring[s.next] = k
	s.next = (s.next + 1) % seenMax
	s.set[k] = struct{}{}
	return false
}
