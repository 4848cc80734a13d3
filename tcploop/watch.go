package tcploop

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Watches: descriptors other than the loop's own connections and
// listeners, read on a loop by their owner's Watcher (a UDP service's
// socket and its flows' sockets), so that their datagrams cost no
// goroutine wake-up and no processor besides the loops'. nginx and
// HAProxy serve UDP from the same event loops as TCP.
//
// A watch is level-triggered: a Watcher that leaves datagrams queued (it
// reads a bounded batch, so that one busy socket does not starve the
// loop's connections) is told again at the loop's next wait.

// A Watcher reads a watched descriptor. Its methods run on the watch's
// loop: they must not block.
type Watcher interface {
	// Readable says the descriptor may have something to read, or an
	// error to report. A stale report is possible: reading then finds
	// nothing.
	Readable(w *Watch)
	// Tick runs at each of the loop's ticks (a tenth of a second) when the
	// watch was made with ticks, with the loop's clock (unix nanos).
	Tick(w *Watch, now int64)
}

// A Watch is a descriptor watched on a loop. Its owner closes the
// descriptor after Stop, or closes it and then has the loop Forget it:
// closing a descriptor no other process shares takes it out of the loop's
// epoll set (a fork's child shares it until it execs: the loop may hear
// of it a moment longer, a stale report).
type Watch struct {
	l       *loop
	slot    int32
	fd      int
	ticks   bool
	stopped bool // owned by the loop
	w       Watcher
}

// Watches is the number of descriptors the loops watch.
func (ls *Loops) Watches() int {
	n := 0
	for _, l := range ls.loops {
		n += int(l.watching.Load())
	}
	return n
}

// WatchesOn is the number of descriptors loop i watches.
func (ls *Loops) WatchesOn(i int) int { return int(ls.loops[i].watching.Load()) }

// Len is the number of loops.
func (ls *Loops) Len() int { return len(ls.loops) }

// Watch watches fd on loop i (modulo Len; below 0, the least loaded by
// its watches and connections) for w, with ticks when asked, and returns
// once the loop watches it. It must not be called on a loop (a Watcher's
// method watches more through its own Watch).
func (ls *Loops) Watch(i int, fd int, w Watcher, ticks bool) (*Watch, error) {
	ls.mu.Lock()
	if ls.closed {
		ls.mu.Unlock()
		return nil, os.ErrClosed
	}
	var l *loop
	if i >= 0 {
		l = ls.loops[i%len(ls.loops)]
	} else {
		l = ls.loops[0]
		for _, o := range ls.loops[1:] {
			if o.load()+o.watching.Load() < l.load()+l.watching.Load() {
				l = o
			}
		}
	}
	ls.mu.Unlock()
	var wt *Watch
	var err error = os.ErrClosed
	l.do(func() { wt, err = l.watch(fd, w, ticks) })
	return wt, err
}

// Watch watches fd on wt's loop for w. It runs on that loop: a Watcher
// that opens a socket (a UDP flow's) watches it next to its own.
func (wt *Watch) Watch(fd int, w Watcher, ticks bool) (*Watch, error) {
	return wt.l.watch(fd, w, ticks)
}

// Stop ends the watch of a descriptor still open; it runs on the watch's
// loop (in a Watcher's method or through Do). The descriptor may be
// closed after it.
func (wt *Watch) Stop() {
	if !wt.stopped {
		rawEpollCtl(wt.l.ep, unix.EPOLL_CTL_DEL, wt.fd, nil) // open: its owner closes it only after Stop
		wt.Forget()
	}
}

// Forget ends the watch of a descriptor closed already, without a system
// call: its number may be another's by now. It runs on the watch's loop.
func (wt *Watch) Forget() {
	if wt.stopped {
		return
	}
	wt.stopped = true
	l := wt.l
	l.watches[wt.slot] = nil
	l.wfree = append(l.wfree, wt.slot)
	l.watching.Add(-1)
	if wt.ticks {
		l.ticking--
	}
}

// Do runs f on the watch's loop and returns once it has; false when the
// loops are closed (f did not run). It must not be called on a loop.
func (wt *Watch) Do(f func()) bool {
	ran := false
	wt.l.do(func() { f(); ran = true })
	return ran
}

// Now is the loop's clock (unix nanos), read once a wake; on the loop.
func (wt *Watch) Now() int64 { return wt.l.now }

func (l *loop) watch(fd int, w Watcher, ticks bool) (*Watch, error) {
	if l.stopped {
		return nil, os.ErrClosed
	}
	var slot int32
	if n := len(l.wfree); n > 0 {
		slot, l.wfree = l.wfree[n-1], l.wfree[:n-1]
	} else {
		slot = int32(len(l.watches))
		l.watches = append(l.watches, nil)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: slot, Pad: padWatch}
	if err := rawEpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.wfree = append(l.wfree, slot)
		return nil, fmt.Errorf("watching descriptor %d: %w", fd, os.NewSyscallError("epoll_ctl", err))
	}
	wt := &Watch{l: l, slot: slot, fd: fd, ticks: ticks, w: w}
	l.watches[slot] = wt
	l.watching.Add(1)
	if ticks {
		l.ticking++
	}
	return wt, nil
}

// readable tells the watch in slot that its descriptor is readable.
func (l *loop) readable(slot int32) {
	if int(slot) < len(l.watches) {
		if wt := l.watches[slot]; wt != nil {
			wt.w.Readable(wt) // a stale report of a slot reused in this batch is harmless
		}
	}
}

// tickWatches runs the ticking watches' Tick.
func (l *loop) tickWatches() {
	if l.ticking == 0 {
		return
	}
	for _, wt := range l.watches {
		if wt != nil && wt.ticks {
			wt.w.Tick(wt, l.now)
		}
	}
}

// forgetWatches drops the watches of a loop that stops: its set goes
// with it, and the owners close their descriptors.
func (l *loop) forgetWatches() {
	for i, wt := range l.watches {
		if wt != nil {
			wt.stopped = true
			l.watches[i] = nil
		}
	}
	l.watching.Store(0)
	l.ticking = 0
}
