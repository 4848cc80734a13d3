package tcploop

import (
	"testing"
	"time"

	"github.com/tetherlb/tether/tcprelay"
	"golang.org/x/sys/unix"
)

// eventWatcher counts, on the loop, what it is told of an eventfd, and
// reads the counter only when read is set.
type eventWatcher struct {
	fd       int
	read     bool
	readable chan struct{}
	ticks    chan int64
}

func (e *eventWatcher) Readable(*Watch) {
	if e.read {
		var b [8]byte
		unix.Read(e.fd, b[:])
	}
	select {
	case e.readable <- struct{}{}:
	default:
	}
}

func (e *eventWatcher) Tick(_ *Watch, now int64) {
	select {
	case e.ticks <- now:
	default:
	}
}

func newEventWatcher(t *testing.T, read bool) *eventWatcher {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &eventWatcher{fd: fd, read: read, readable: make(chan struct{}, 1), ticks: make(chan int64, 1)}
}

func (e *eventWatcher) signal() {
	one := [8]byte{1}
	unix.Write(e.fd, one[:])
}

func within(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: not within 5 s", what)
	}
}

func quiet(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s", what)
	case <-time.After(100 * time.Millisecond):
	}
}

// A watched descriptor is reported while it has something to read
// (level-triggered: what a Watcher leaves is reported again), and not
// once it has been read; ticks come when asked for; after Stop nothing is
// reported; after the loops close, Do runs nothing.
func TestWatch(t *testing.T) {
	ls, err := New(2, tcprelay.New(func() int { return 4 }))
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()

	lazy := newEventWatcher(t, false) // never reads: reported again and again
	wl, err := ls.Watch(-1, lazy.fd, lazy, false)
	if err != nil {
		t.Fatal(err)
	}
	lazy.signal()
	for range 3 {
		within(t, lazy.readable, "a report of an unread descriptor, again")
	}

	reader := newEventWatcher(t, true)
	wr, err := ls.Watch(-1, reader.fd, reader, true)
	if err != nil {
		t.Fatal(err)
	}
	if wr.l == wl.l {
		t.Errorf("both watches on one loop: a new watch goes to the least loaded")
	}
	reader.signal()
	within(t, reader.readable, "a report of a signalled descriptor")
	quiet(t, reader.readable, "a descriptor read empty was reported again")
	select {
	case now := <-reader.ticks:
		if d := time.Since(time.Unix(0, now)); d < 0 || d > 5*time.Second {
			t.Errorf("a tick's clock is %v off", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no tick within 5 s for a watch with ticks")
	}
	select {
	case <-lazy.ticks:
		t.Error("a watch without ticks was ticked")
	default:
	}

	if !wl.Do(func() { wl.Stop() }) {
		t.Fatal("Do did not run on a running loop")
	}
	for len(lazy.readable) > 0 {
		<-lazy.readable
	}
	quiet(t, lazy.readable, "a stopped watch was reported")

	ls.Close()
	if wr.Do(func() {}) {
		t.Error("Do ran on closed loops")
	}
	if _, err := ls.Watch(0, reader.fd, reader, false); err == nil {
		t.Error("closed loops took a watch")
	}
}
