package tcploop

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// How a loop waits for work: in its own set for a moment after work, then
// parked in the runtime's poller, yielding now and then when it never runs
// out of work.
const (
	// yieldEvery is how often a loop gives its processor back to the Go
	// scheduler. A loop under load finds events at every wait and never
	// parks; the runtime then preempts it after 10 ms, and preempts every
	// busy loop in the same pass, and a processor that takes them from the
	// global queue can take two at once, so one loop waits a whole
	// time slice: wrk's keep-alive p99 on loopback was 5.5-8.2 ms against
	// 3.5-3.6 ms with loops that yield first, at the same rate.
	yieldEvery = 5 * time.Millisecond
	// stayMs is how long a loop that just had work waits for more in
	// its own set, its thread blocked in the kernel, before it parks in
	// the runtime's poller (epoll_wait takes milliseconds). Waking a
	// parked loop goes through the runtime's poller thread and scheduler;
	// on loopback, wrk's Connection: close rate rose from 37 000 to
	// 43 000/s and the CPU per connection fell 97 → 84 µs (HAProxy 89).
	// The processor is held meanwhile, hence short.
	stayMs = 1
)

// run is the loop's goroutine.
func (l *loop) run() {
	defer close(l.done)
	// One wait func for the loop's life: a closure made in the loop
	// escaped to the heap at every wake-up (a fifth of the bytes the
	// loops allocated under short connections).
	n := 0
	parked := false
	wait := func(uintptr) bool {
		var err error
		n, err = rawEpollWait(l.ep, l.events[:], 0)
		if err != nil {
			n = 0
			return err != unix.EINTR // EINTR: try again, anything else is reported below
		}
		parked = parked || n == 0
		return n > 0
	}
	var ran int64 // when the loop last let the runtime schedule
	stay := false
	for !l.stopped {
		n, parked = 0, false
		var err error
		if stay {
			n, err = rawEpollWait(l.ep, l.events[:], stayMs)
			if err != nil {
				n, err = 0, nil // EINTR, a signal: park, the runtime may want the thread
			}
		} else {
			err = l.parkUntil(wait)
		}
		stay = n > 0
		l.now = time.Now().UnixNano()
		switch {
		case parked:
			// Parking let the runtime schedule. Counting from it, a
			// loop that parks often never yields: a yield also wakes
			// another thread to look for work (wakep), for nothing.
			ran = l.now
		case l.now-ran >= int64(yieldEvery):
			ran = l.now
			runtime.Gosched()
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			panic(fmt.Sprintf("tcploop: the epoll set failed: %v", err)) // only a closed set can: the loop owns it
		}
		for i := range n {
			l.dispatch(&l.events[i])
		}
		if l.now >= l.nextTick {
			l.sweep()
		}
		l.armDeadline()
	}
}

// parkUntil parks the loop in the runtime's poller until its set has
// events (wait takes them) or the deadline passes. park asks for the
// set's readiness only meanwhile: a modification of a registration
// allocates nothing, so it cannot fail as an addition could.
func (l *loop) parkUntil(wait func(uintptr) bool) error {
	l.parkInterest(unix.EPOLLIN)
	err := l.rc.Read(wait)
	l.parkInterest(0)
	return err
}

// parkInterest sets the events park reports of the set.
func (l *loop) parkInterest(events uint32) {
	ev := unix.EpollEvent{Events: events}
	if err := rawEpollCtl(l.park, unix.EPOLL_CTL_MOD, l.ep, &ev); err != nil {
		panic(fmt.Sprintf("tcploop: the loop's parking set failed: %v", err)) // only a closed one can: the loop owns both
	}
}

// armDeadline keeps the poller's deadline at the next tick while there are
// connections, resting listeners or ticking watches, and clears it when
// there are none.
func (l *loop) armDeadline() {
	want := int64(0)
	if l.open.Load() > 0 || l.ticking > 0 || l.resting() {
		want = l.nextTick
	}
	if want == l.deadline {
		return
	}
	l.deadline = want
	if want == 0 {
		l.file.SetReadDeadline(time.Time{})
	} else {
		l.file.SetReadDeadline(time.Unix(0, want))
	}
}

// newParkSet makes a loop's parking set: an epoll instance that holds the
// set ep without interest in it until the loop parks (parkUntil).
func newParkSet(ep int) (int, error) {
	park, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return -1, os.NewSyscallError("epoll_create1", err)
	}
	ev := unix.EpollEvent{}
	if err := unix.EpollCtl(park, unix.EPOLL_CTL_ADD, ep, &ev); err != nil {
		unix.Close(park)
		return -1, os.NewSyscallError("epoll_ctl", err)
	}
	// Non-blocking, so that os.NewFile puts it in the runtime's poller.
	if err := unix.SetNonblock(park, true); err != nil {
		unix.Close(park)
		return -1, os.NewSyscallError("fcntl", err)
	}
	return park, nil
}
