package tcploop

import (
	"testing"

	"golang.org/x/sys/unix"
)

// pollRegistered is what the descriptor a loop registered with the Go
// runtime's poller reports right now: what would wake the runtime's
// poller thread.
func pollRegistered(t *testing.T, l *loop) int {
	t.Helper()
	var events [4]unix.EpollEvent
	var n int
	var err error
	if cerr := l.rc.Control(func(fd uintptr) { n, err = rawEpollWait(int(fd), events[:], 0) }); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A loop that is awake takes its set's events itself; the runtime's
// poller must not hear of them too. It did when the set itself was what
// the runtime polled: each event then also woke the poller's thread, two
// needless wake-ups of another thread a request/response round trip.
func TestAwakeLoopLeavesTheRuntimesPollerAsleep(t *testing.T) {
	l, err := newLoop(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.release()
	l.wakeUp() // an event in the set, with the loop awake (its goroutine not parked)
	if n := pollRegistered(t, l); n != 0 {
		t.Fatalf("the runtime's poller sees %d events of a loop that is not parked", n)
	}
	l.parkInterest(unix.EPOLLIN) // as parkUntil does
	if n := pollRegistered(t, l); n != 1 {
		t.Fatalf("a parked loop's set with an event: the runtime's poller sees %d events, want 1", n)
	}
	l.parkInterest(0)
	if n := pollRegistered(t, l); n != 0 {
		t.Fatalf("after waking: the runtime's poller sees %d events", n)
	}
}
