package cluster

import (
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/tetherlb/tether/affinity"
)

// Member is one instance as `tether cluster members` shows it.
type Member struct {
	Name  string
	Addr  string
	State string // alive, suspect, dead, left
	Self  bool
	// Templates: this instance's table, or the peer's last full state.
	Templates int
	// Holds is the peer's open templates held here.
	Holds int
	// Lag is the time since the peer was last heard from (a message or
	// its state); 0 for this instance.
	Lag time.Duration
}

// Members lists the instances memberlist knows, this one first.
func (n *Node) Members() []Member {
	nodes := n.ml.Members()
	holds := map[uint32]int{}
	n.mu.Lock()
	for k := range n.holds {
		holds[k.peer]++
	}
	type seen struct {
		templates int
		heard     time.Time
	}
	peers := map[uint32]seen{}
	for id, p := range n.peers {
		peers[id] = seen{p.templates, p.heard}
	}
	n.mu.Unlock()
	var out []Member
	for _, m := range nodes {
		pid := id(m.Name)
		mb := Member{Name: m.Name, Addr: m.Address(), State: stateName(m.State), Holds: holds[pid]}
		if pid == n.id {
			mb.Self, mb.Templates = true, n.cfg.Table.Len()
		} else if p, ok := peers[pid]; ok {
			mb.Templates, mb.Lag = p.templates, time.Since(p.heard)
		}
		out = append(out, mb)
	}
	slices.SortFunc(out, func(a, b Member) int {
		switch {
		case a.Self:
			return -1
		case b.Self:
			return 1
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	}
	return "unknown"
}

// counters are the node's statistics, updated without its lock.
type counters struct {
	queued, received, dropped, pruned, lost atomic.Uint64
	sent, sendErrors                        atomic.Uint64
	merges                                  atomic.Uint64
	mergeNanos, stateTemplates              atomic.Int64
	applied                                 [affinity.Ignored + 1]atomic.Uint64
}

// Stats are the node's counters since it started.
type Stats struct {
	Queued uint64 // template changes queued to send
	Sent   uint64 // messages sent (one per member)
	// SendErrors are messages memberlist could not send.
	SendErrors uint64
	Received   uint64 // peers' templates received
	Dropped    uint64 // messages and states refused (garbage, wrong version, too large)
	Pruned     uint64 // changes dropped at QueueDepth
	Lost       uint64 // times the table's journal overflowed
	// QueueDepth is the changes and broadcasts waiting now.
	QueueDepth int
	// Merges counts full states merged; the last took MergeTime for
	// StateTemplates templates.
	Merges         uint64
	MergeTime      time.Duration
	StateTemplates int
	// Adopted counts peers' templates by what became of them here.
	Added, Same, Replaced, Kept, Ignored uint64
	// Holds is the peers' open templates held here now.
	Holds int
	Ready bool
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	n.mu.Lock()
	holds := len(n.holds)
	n.mu.Unlock()
	return Stats{
		Queued: n.st.queued.Load(), Received: n.st.received.Load(), Dropped: n.st.dropped.Load(),
		Pruned: n.st.pruned.Load(), Lost: n.st.lost.Load(), QueueDepth: n.q.NumQueued() + n.outboxLen(),
		Sent: n.st.sent.Load(), SendErrors: n.st.sendErrors.Load(),
		Merges: n.st.merges.Load(), MergeTime: time.Duration(n.st.mergeNanos.Load()), StateTemplates: int(n.st.stateTemplates.Load()),
		Added: n.st.applied[affinity.Added].Load(), Same: n.st.applied[affinity.Same].Load(),
		Replaced: n.st.applied[affinity.Replaced].Load(), Kept: n.st.applied[affinity.Kept].Load(),
		Ignored: n.st.applied[affinity.Ignored].Load(), Holds: holds, Ready: n.Ready(),
	}
}

func (n *Node) outboxLen() int {
	n.out.mu.Lock()
	defer n.out.mu.Unlock()
	return len(n.out.recs)
}
