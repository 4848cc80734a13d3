package director

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Verdict is what a decision makes of a flow's first packet.
type Verdict int

const (
	// Chosen: a server was chosen; the packet is accepted with its
	// choice mark, and the hold is kept until the flow ends.
	Chosen Verdict = iota
	// Unknown: no service of tether's (a config change raced the
	// packet); the packet is accepted unmarked.
	Unknown
	// NoServer: no server can take the flow; the packet is dropped and
	// the client retries.
	NoServer
	// Stale: the chosen server has no choice mark (a reload raced the
	// packet); the packet is dropped and the client retries.
	Stale
	// Denied: the service refuses the client (its access list); the
	// packet is dropped.
	Denied
)

// Queues are the queue settings, fixed until the director is closed.
type Queues struct {
	First, Count uint16 // queue numbers First..First+Count-1
	Length       uint32 // packets a queue holds
	// FailOpen: a full queue, or one nobody reads, accepts new flows
	// instead of dropping them (the nft rules then pick a server).
	FailOpen bool
}

// Options configure a Director. H is what a flow holds while it is open
// (a server's count, a template lease), given back through Release.
type Options[H any] struct {
	Queues Queues
	Logger *slog.Logger // nil discards
	// Do runs f in the director's network namespace (queues and
	// conntrack sockets are made through it); nil runs f as is.
	Do func(f func() error) error
	// Decide picks the server of a new flow k whose first packet carries
	// mark: the verdict, the choice mark and what the flow holds.
	Decide func(k FlowKey, mark uint32) (Verdict, uint32, H)
	// Release gives back what a flow held, once: when a conntrack scan
	// finds the flow closed or gone, when a duplicate decision loses, or
	// at Close.
	Release func(H)
	// Adopt, when set, takes an open flow the kernel gave a choice mark
	// without asking (a returning client, from the kernel template map),
	// as a conntrack scan finds it: what Adopt returns (ok) is held until
	// the flow ends, as a decision's is.
	Adopt func(k FlowKey, mark uint32) (H, bool)
	// Seen, with Adopt, is told of such a flow that opened and closed
	// between two scans, once.
	Seen func(k FlowKey, mark uint32)
	// Marks, when set, is the kernel's filter for the scans: only entries
	// whose conntrack mark&mask equals mark&mask (every choice mark).
	Marks func() (mark, mask uint32)
	// ScanEvery is the least interval between conntrack scans (0:
	// DefaultScanEvery).
	ScanEvery time.Duration
	// VerdictHook, when set, runs before each verdict is sent; tests use
	// it to hold a packet in the queue.
	VerdictHook func()
}

// Director reads the queues and keeps the open flows it decided.
type Director[H any] struct {
	o      Options[H]
	log    *slog.Logger
	queues []*queue

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the queues' readers and the conntrack follower

	mu    sync.Mutex
	flows map[flowID]*flow[H]
	epoch time.Time // flows' births are counted from it

	// The scans': recent are the closed flows (keyHash) the last scan
	// ended or told of, which the next one skips, and spare the set the
	// next scan fills; the follower's alone.
	recent, spare closedSet
	seed          maphash.Seed
	interval      atomic.Int64 // the scans' current interval (ScanInterval)

	stats counters
}

// flow is an open flow and what it holds.
type flow[H any] struct {
	mark uint32
	born time.Duration // since the director's epoch
	hold H
	scan uint64 // the last scan that found it open
}

// flowID is a FlowKey as the flows map keys it: 38 bytes where a FlowKey
// is 72 (its addresses carry a zone pointer each). A flood of new clients
// keeps thousands of flows until the next scan finds them closed.
type flowID struct {
	src, dst     [16]byte
	sport, dport uint16
	proto        uint8
	v4           bool // an IPv4 flow: ::ffff:a.b.c.d in IPv6 is another
}

func (k FlowKey) id() flowID {
	return flowID{src: k.Src.Addr().As16(), dst: k.Dst.Addr().As16(), sport: k.Src.Port(), dport: k.Dst.Port(), proto: k.Proto, v4: k.Src.Addr().Is4()}
}

// Open binds the queues and starts following conntrack. It needs
// CAP_NET_ADMIN.
func Open[H any](o Options[H]) (*Director[H], error) {
	d := &Director[H]{o: o, log: o.Logger, flows: map[flowID]*flow[H]{}, epoch: time.Now(),
		seed: maphash.MakeSeed()}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	err := d.do(func() error {
		for i := range o.Queues.Count {
			num := o.Queues.First + i
			q, err := openQueue(num, o.Queues.Length, o.Queues.FailOpen, d.answer, d.answerError)
			if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EPERM) {
				return fmt.Errorf("nfqueue %d: another program is bound to it: %w", num, err)
			}
			if err != nil {
				return fmt.Errorf("nfqueue %d: %w", num, err)
			}
			d.queues = append(d.queues, q)
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				if err := q.run(d.queueError); err != nil && d.ctx.Err() == nil {
					d.log.Error("director: reading the queue stopped", "queue", num, "err", err)
				}
			}()
		}
		return nil
	})
	if err != nil {
		d.stop()
		return nil, err
	}
	d.wg.Add(1)
	go d.followConntrack()
	return d, nil
}

func (d *Director[H]) do(f func() error) error {
	if d.o.Do != nil {
		return d.o.Do(f)
	}
	return f()
}

// stop unbinds the queues and stops following conntrack.
func (d *Director[H]) stop() {
	d.cancel()
	for _, q := range d.queues {
		q.Close()
	}
	d.wg.Wait()
}

// Close unbinds the queues, stops following conntrack and releases what
// every open flow held; the flows themselves stay with the kernel.
func (d *Director[H]) Close() {
	d.stop()
	d.mu.Lock()
	flows := slices.Collect(maps.Values(d.flows))
	d.flows = map[flowID]*flow[H]{}
	d.mu.Unlock()
	for _, f := range flows {
		d.o.Release(f.hold)
	}
}

// Flows is the number of open flows the director holds something for.
func (d *Director[H]) Flows() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.flows)
}

// queueError says whether a receive error ends the queue's reader: it
// reads on after an overrun (the kernel dropped or, fail open, accepted
// packets the queue had no room for) and after any other error, and stops
// when the socket is gone.
func (d *Director[H]) queueError(err error) bool {
	if d.ctx.Err() != nil || errors.Is(err, unix.EBADF) {
		return true
	}
	if errors.Is(err, unix.ENOBUFS) {
		d.stats.overruns.Add(1)
		return false
	}
	d.answerError(err)
	// An error that repeats at once (a socket broken in a way not seen
	// here) must not spin a core: at most a thousand a second.
	time.Sleep(time.Millisecond)
	return false
}

// answerError counts an error the queue's socket reported: an error
// answer to a verdict (ENOENT: the kernel flushed the packet, as it does
// with every queued packet when any netfilter hook of the namespace goes,
// a table replaced by tether or by anyone's nft), or a receive error.
func (d *Director[H]) answerError(err error) {
	if d.stats.queueErrs.Add(1) == 1 {
		d.log.Warn("director: an error reading the queue; reading on (tether_director_queue_errors counts them)", "err", err)
	}
}

// answer decides and answers a queued packet.
func (d *Director[H]) answer(q *queue, p packet) {
	v, m, set := d.decide(p.payload, p.mark)
	if d.o.VerdictHook != nil {
		d.o.VerdictHook()
	}
	if err := q.verdict(p.id, v, m, set); err != nil {
		d.stats.verdictErrs.Add(1)
	}
}

// decide answers packet b: the nfqueue verdict, and the mark to give the
// packet (set) or none.
func (d *Director[H]) decide(b []byte, mark uint32) (verdict int, newMark uint32, set bool) {
	k, err := ParseFlow(b)
	if err != nil {
		d.stats.unparsed.Add(1)
		return nfAccept, 0, false
	}
	id := k.id()
	d.mu.Lock()
	f := d.flows[id]
	d.mu.Unlock()
	if f != nil { // the first packet again, before conntrack kept the choice
		return nfAccept, f.mark, true
	}
	v, m, hold := d.o.Decide(k, mark)
	switch v {
	case Unknown:
		d.stats.unknown.Add(1)
		return nfAccept, 0, false
	case NoServer:
		d.stats.noServer.Add(1)
		return nfDrop, 0, false
	case Stale:
		d.stats.unknown.Add(1)
		return nfDrop, 0, false
	case Denied:
		d.stats.denied.Add(1)
		return nfDrop, 0, false
	}
	d.mu.Lock()
	if old := d.flows[id]; old != nil {
		d.mu.Unlock()
		d.o.Release(hold)
		return nfAccept, old.mark, true
	}
	d.flows[id] = &flow[H]{mark: m, born: time.Since(d.epoch), hold: hold}
	d.mu.Unlock()
	d.stats.verdicts.Add(1)
	return nfAccept, m, true
}

// counters are the director's own counts, reported through Stats.
type counters struct {
	verdicts, adopted, seen, unparsed, unknown, noServer, denied, verdictErrs, overruns, queueErrs, ended, reconciled atomic.Uint64
	scans, scanNanos, scanCPUNanos, entries                                                                           atomic.Uint64
}

// Stats are the director's counts since Open.
type Stats struct {
	Verdicts      uint64        // new flows given a server
	Adopted       uint64        // open flows the kernel template map gave a server
	Seen          uint64        // flows the kernel template map gave a server that closed between two scans
	QueueErrors   uint64        // errors reading the queue, read on
	Unparsed      uint64        // packets without a TCP or UDP flow
	Unknown       uint64        // packets of no service (a reload raced them)
	NoServer      uint64        // new flows dropped: no server could take them
	Denied        uint64        // new flows dropped: the service's access list
	VerdictErrors uint64        // verdicts the kernel refused (packet gone)
	Overruns      uint64        // queue overruns
	FlowsEnded    uint64        // flows a scan found closed
	Reconciled    uint64        // flows ended because a scan no longer found them
	Scans         uint64        // conntrack scans
	ScanTime      time.Duration // the last scan's, start to end
	ScanCPU       time.Duration // the CPU time the last scan used: the interval's basis
	ScanEntries   uint64        // conntrack entries the last scan read
	Flows         int           // open flows now
}

// Stats reads the counters.
func (d *Director[H]) Stats() Stats {
	c := &d.stats
	return Stats{
		Verdicts: c.verdicts.Load(), Adopted: c.adopted.Load(), QueueErrors: c.queueErrs.Load(), Unparsed: c.unparsed.Load(), Unknown: c.unknown.Load(),
		NoServer: c.noServer.Load(), Denied: c.denied.Load(), VerdictErrors: c.verdictErrs.Load(), Overruns: c.overruns.Load(),
		FlowsEnded: c.ended.Load(), Reconciled: c.reconciled.Load(), Flows: d.Flows(), Seen: c.seen.Load(),
		Scans: c.scans.Load(), ScanTime: time.Duration(c.scanNanos.Load()), ScanCPU: time.Duration(c.scanCPUNanos.Load()), ScanEntries: c.entries.Load(),
	}
}
