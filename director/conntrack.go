package director

import (
	"errors"
	"hash/maphash"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// The director learns how its flows go from periodic scans of conntrack's
// table (ctdump.go), not from conntrack's events: an event listener makes
// the kernel build an event for every state change of every flow of the
// namespace, in the packet path, while a scan costs one walk of the table
// per interval whatever the connection rate. A scan
//   - ends the flows it decided or adopted that closed (TCP TIME_WAIT or
//     CLOSE) or that conntrack no longer has;
//   - adopts open flows the kernel template map gave a choice mark
//     without the queue (Options.Adopt);
//   - tells of such flows that opened and closed since the last scan
//     (Options.Seen), which conntrack keeps a while in TIME_WAIT: the time
//     they have spent there dates their close, so each is told once.
//
// So the director sees a flow's end up to one interval late, and a
// kernel-served flow's start likewise; the interval is ScanEvery, or
// scanCost times the CPU time the last scan took when that is longer.

// DefaultScanEvery is the least interval between conntrack scans.
const DefaultScanEvery = time.Second

// scanCost bounds the scans' share of a CPU: the next scan waits at least
// this many times the CPU time the last one took (2 %). CPU time, not
// the time it lasted: on a busy host a scan waits for a CPU, and counted
// in wall time that wait stretched the interval (a 14 ms scan, 0.7 s)
// and with it the lag the kernel template map keeps, so that returning
// clients went up the queue exactly when the host had least to spare.
const scanCost = 50

// reconcileGrace keeps a flow decided less than this before a scan began
// out of the scan's verdict that conntrack no longer has it: its entry
// may not be confirmed yet (that takes microseconds after the verdict).
const reconcileGrace = time.Second

// followConntrack scans conntrack until the director stops.
func (d *Director[H]) followConntrack() {
	defer d.wg.Done()
	// One thread for the scans, so that its CPU clock is theirs.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	every := d.o.ScanEvery
	if every <= 0 {
		every = DefaultScanEvery
	}
	d.interval.Store(int64(every))
	var dumper *ctDumper
	defer func() {
		if dumper != nil {
			dumper.Close()
		}
	}()
	last := time.Now() // the previous scan's start
	timer := time.NewTimer(every)
	defer timer.Stop()
	failing := false
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-timer.C:
		}
		start, cpu := time.Now(), threadCPU()
		var err error
		if dumper == nil {
			dumper, err = dialCTDump(d.do)
		}
		if err == nil {
			err = d.scan(dumper, start.Sub(last))
		}
		took, used := time.Since(start), threadCPU()-cpu
		d.stats.scanNanos.Store(uint64(took))
		d.stats.scanCPUNanos.Store(uint64(used))
		switch {
		case err != nil && !failing:
			failing = true
			d.log.Warn("director: conntrack scan failed; flows' ends wait for the next scan", "err", err)
		case err == nil && failing:
			failing = false
			d.log.Info("director: conntrack scans work again")
		}
		if err != nil && !errors.Is(err, errDumpInterrupted) && dumper != nil {
			dumper.Close()
			dumper = nil
		} else {
			last = start
		}
		next := max(every, scanCost*used)
		d.interval.Store(int64(next))
		d.stats.scans.Add(1) // after the interval: Stats then shows the scan's
		timer.Reset(next)
	}
}

// threadCPU is the CPU time the calling thread has used, in user and
// kernel mode (the kernel walks the table in the scan's recvmsg).
func threadCPU() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// scan reads conntrack's table once; since is the time since the last
// complete scan began.
func (d *Director[H]) scan(c *ctDumper, since time.Duration) error {
	start := time.Now()
	n := d.stats.scans.Load() + 1
	tw, cl := d.closeTimeouts()
	// closedFor is how long ago a closed entry's connection closed, in
	// whole seconds, from the time conntrack has left to keep it (ok
	// false: longer left than the timeout, which changed meanwhile).
	closedFor := func(e ctEntry) (ago uint32, ok bool) {
		timeout := tw
		if e.State == tcpClose {
			timeout = cl
		}
		return timeout - e.Left, e.Left <= timeout
	}
	window := uint32(since/time.Second) + 1 // Left is in whole seconds
	recent := d.spare                       // the last scan's spare, emptied
	recent.reset()
	var mark, mask uint32
	if d.o.Marks != nil {
		mark, mask = d.o.Marks()
	}
	entries := 0
	err := c.dump(mark, mask, func(e ctEntry) {
		entries++
		if e.Mark == 0 {
			return
		}
		id := e.Key.id()
		d.mu.Lock()
		f := d.flows[id]
		switch {
		case f != nil && e.closed():
			delete(d.flows, id)
		case f != nil:
			f.scan = n
		}
		d.mu.Unlock()
		if f != nil {
			if e.closed() {
				if ago, ok := closedFor(e); ok {
					remember(&recent, d.keyHash(e.Key), ago)
				}
				d.stats.ended.Add(1)
				d.o.Release(f.hold)
			}
			return
		}
		if d.o.Adopt == nil {
			return
		}
		if !e.closed() {
			d.adopt(e.Key, e.Mark, n)
			return
		}
		// A flow the kernel served and closed: once, if it closed
		// since the last scan.
		ago, ok := closedFor(e)
		if !ok || ago > window {
			return // closed before the last scan began
		}
		hk := d.keyHash(e.Key)
		remember(&recent, hk, ago)
		if d.recent.has(hk) || d.o.Seen == nil {
			return
		}
		d.stats.seen.Add(1)
		d.o.Seen(e.Key, e.Mark)
	})
	d.stats.entries.Store(uint64(entries))
	recent.seal()
	d.recent, d.spare = recent, d.recent
	if err != nil {
		return err
	}
	// Flows the scan did not find are gone.
	cutoff := start.Sub(d.epoch) - reconcileGrace
	gone := d.end(func(f *flow[H]) bool { return f.scan != n && f.born < cutoff })
	d.stats.reconciled.Add(uint64(gone))
	return nil
}

// end forgets the flows that match and releases what they held; it
// returns how many.
func (d *Director[H]) end(match func(*flow[H]) bool) int {
	var gone []*flow[H]
	d.mu.Lock()
	for k, f := range d.flows {
		if match(f) {
			delete(d.flows, k)
			gone = append(gone, f)
		}
	}
	d.mu.Unlock()
	for _, f := range gone {
		d.o.Release(f.hold)
	}
	return len(gone)
}

// ScanInterval is the time until the next conntrack scan: a flow the
// kernel template map serves is counted at most this late.
func (d *Director[H]) ScanInterval() time.Duration {
	if v := d.interval.Load(); v > 0 {
		return time.Duration(v)
	}
	if d.o.ScanEvery > 0 {
		return d.o.ScanEvery
	}
	return DefaultScanEvery
}

// remember keeps a closed flow (its keyHash) that the next scan could
// take for one closed since the last: one that closed ago ≤ 2 seconds
// before this scan read it (Left is in whole seconds); an older one will
// be outside the next scan's window.
func remember(recent *closedSet, hk uint64, ago uint32) {
	if ago <= 2 {
		recent.add(hk)
	}
}

// keyHash stands for a flow in recent: a ninth of a FlowKey's size, and
// two flows' hashes collide once in 2^64 (the cost: one short flow's
// touch skipped).
func (d *Director[H]) keyHash(k FlowKey) uint64 { return maphash.Comparable(d.seed, k) }

// closeTimeouts are conntrack's TIME_WAIT and CLOSE timeouts in seconds
// (the namespace's sysctls; Linux's defaults when unreadable).
func (d *Director[H]) closeTimeouts() (tw, cl uint32) {
	tw, cl = 120, 10
	d.do(func() error {
		read := func(name string, v *uint32) {
			b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_" + name)
			if err != nil {
				return
			}
			if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32); err == nil {
				*v = uint32(n)
			}
		}
		read("time_wait", &tw)
		read("close", &cl)
		return nil
	})
	return tw, cl
}

// adopt keeps a new flow k that the kernel gave choice mark without the
// queue.
func (d *Director[H]) adopt(k FlowKey, mark uint32, scan uint64) {
	hold, ok := d.o.Adopt(k, mark)
	if !ok {
		return
	}
	id := k.id()
	d.mu.Lock()
	if d.flows[id] != nil { // decided meanwhile: cannot happen for a flow conntrack already had
		d.mu.Unlock()
		d.o.Release(hold)
		return
	}
	d.flows[id] = &flow[H]{mark: mark, born: time.Since(d.epoch), hold: hold, scan: scan}
	d.mu.Unlock()
	d.stats.adopted.Add(1)
}

// ResetMarks deletes the conntrack entries of flows with the given marks
// (IPVS's expire_nodest_conn) and ends the director's: their clients'
// next packets start new flows, which the queue decides anew.
func (d *Director[H]) ResetMarks(marks []uint32) error {
	if d == nil {
		return nil
	}
	err := resetMarks(d.do, marks)
	gone := d.end(func(f *flow[H]) bool { return slices.Contains(marks, f.mark) })
	d.stats.ended.Add(uint64(gone))
	return err
}

// resetMarks deletes the conntrack entries of flows with the given marks.
// do runs it in the right network namespace (nil: as is).
func resetMarks(do func(func() error) error, marks []uint32) error {
	if len(marks) == 0 {
		return nil
	}
	f := func() error {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		for _, m := range marks {
			if err := c.FlushFilter(conntrack.NewFilter().Mark(m)); err != nil {
				return err
			}
		}
		return nil
	}
	if do != nil {
		return do(f)
	}
	return f()
}
