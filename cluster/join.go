package cluster

import (
	"context"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"
)

// join joins through any of cfg.Join, retrying every second, and says
// ready once it has (memberlist merges the peer's full state before Join
// returns) or after JoinTimeout. Then it keeps rejoining the listed
// instances that are not alive members: memberlist forgets a peer it
// declared dead, so after a partition longer than its suspicion timeout
// (seconds) the two sides would stay apart. A join blocks for up to
// memberlist's TCPTimeout: on its own goroutine, so that changes flow
// meanwhile.
func (n *Node) join(ctx context.Context) {
	defer n.wg.Done()
	deadline := time.NewTimer(n.cfg.JoinTimeout)
	defer deadline.Stop()
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			if !n.ready.Load() {
				n.log.Warn("cluster: no peer answered; serving without their templates", "join", n.cfg.Join, "waited", n.cfg.JoinTimeout)
				n.setReady("join timeout")
			}
			continue
		case <-retry.C:
		}
		wait := time.Second
		if !n.ready.Load() {
			c, err := n.ml.Join(n.cfg.Join)
			if c > 0 {
				n.setReady("joined")
				wait = rejoinInterval
			} else {
				n.log.Debug("cluster: join failed; retrying", "join", n.cfg.Join, "err", err)
			}
		} else {
			if missing := n.missing(); len(missing) > 0 {
				if c, _ := n.ml.Join(missing); c > 0 {
					n.log.Info("cluster: rejoined", "listed", missing, "answered", c)
				}
			}
			wait = rejoinInterval
		}
		retry.Reset(wait)
	}
}

// rejoinInterval is how often listed instances that are not alive members
// are joined again.
const rejoinInterval = 5 * time.Second

// missing are the listed instances that are not alive members (a listed
// name that is not an address is always tried: a join of a member costs
// a push/pull).
func (n *Node) missing() []string {
	alive := map[netip.AddrPort]bool{}
	for _, m := range n.ml.Members() {
		if a, ok := netip.AddrFromSlice(m.Addr); ok && m.State == memberlist.StateAlive {
			alive[netip.AddrPortFrom(a.Unmap(), m.Port)] = true
		}
	}
	var out []string
	for _, j := range n.cfg.Join {
		if ap, err := netip.ParseAddrPort(j); err != nil || !alive[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] {
			out = append(out, j)
		}
	}
	return out
}

// others is join without this instance's own addresses: one config can
// list every instance, and joining itself would make it "ready" with
// nothing.
func others(join []string, self ...netip.AddrPort) []string {
	var out []string
	for _, j := range join {
		ap, err := netip.ParseAddrPort(j)
		mine := false
		for _, s := range self {
			mine = mine || err == nil && ap.Addr().Unmap() == s.Addr().Unmap() && ap.Port() == s.Port()
		}
		if !mine {
			out = append(out, j)
		}
	}
	return out
}
