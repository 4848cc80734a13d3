package tcploop

import (
	"net/netip"
	"sync"
)

// Balance: the kernel spreads new connections over the loops' SO_REUSEPORT
// listeners by a hash of their addresses, so a few long connections can
// land unevenly (64 keep-alive connections split 27/37 in a benchmark,
// and the busier loop set the p99). A loop that accepts a connection
// while it holds clearly more than the least loaded loop hands it over,
// as HAProxy's listeners pass a connection to their least loaded thread.
// Handing over costs a wake-up of the other loop, so it is kept for a
// real imbalance (more than slack connections).

// handoff is an accepted connection on its way to another loop.
type handoff struct {
	svc Service
	fd  int
	src netip.AddrPort
}

// handoffQueue bounds the connections waiting to reach one loop; a full
// queue keeps the connection where it was accepted.
const handoffQueue = 64

// balancer is what the loops share to hand connections to each other.
type balancer struct {
	loops []*loop
	mu    sync.Mutex // orders sends against closed
	// closed: Loops.Close has begun; nothing is handed over any more, so
	// a stopped loop's queue can be emptied for good.
	closed bool
}

// load is the connections l holds or is about to.
func (l *loop) load() int64 { return l.open.Load() + l.incoming.Load() }

// slack is how many more connections than the least loaded loop a loop
// keeps before it hands new ones over: two, and an eighth more at scale.
func slack(n int64) int64 { return 2 + n/8 }

// lighter is the least loaded other loop when it is lighter than l by
// more than slack, or nil.
func (l *loop) lighter() *loop {
	mine := l.load()
	var best *loop
	least := mine - slack(mine)
	for _, o := range l.bal.loops {
		if o == l {
			continue
		}
		if n := o.load(); n < least {
			best, least = o, n
		}
	}
	return best
}

// handOver queues h for loop t and wakes it; false: t takes no more now
// (its queue is full, or the loops are closing), and the caller keeps it.
func (b *balancer) handOver(t *loop, h handoff) bool {
	b.mu.Lock()
	ok := !b.closed
	if ok {
		t.incoming.Add(1)
		select {
		case t.handoffs <- h:
		default:
			t.incoming.Add(-1)
			ok = false
		}
	}
	b.mu.Unlock()
	if ok {
		t.wakeUp()
	}
	return ok
}

// close stops handing over; the loops' queues are emptied as they stop.
func (b *balancer) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
}

// drainHandoffs takes the connections other loops handed to l: serves
// them, or closes them once l has stopped (the balancer is closed then:
// none can follow).
func (l *loop) drainHandoffs(serve bool) {
	for {
		select {
		case h := <-l.handoffs:
			l.incoming.Add(-1)
			if serve {
				l.serve(h.svc, h.fd, h.src)
			} else {
				rawClose(h.fd)
			}
		default:
			return
		}
	}
}
