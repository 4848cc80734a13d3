package tcploop

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetherlb/tether/tcprelay"
	"golang.org/x/sys/unix"
)

// A Service decides for the connections of one listener. Its methods run
// on a loop, one connection at a time per loop: they must not block, and
// must not keep the *Conn after Done.
type Service interface {
	// Accept decides for a new connection.
	Accept(c *Conn) Decision
	// Failed says the connect to the server failed (err): the Decision
	// names the next server, or none.
	Failed(c *Conn, err error) Decision
	// Connected says the server accepted: the copy begins.
	Connected(c *Conn)
	// Done says the connection ended, with the bytes from the client (in)
	// and to it (out) and the error that ended it (nil for a clean close).
	// It is called once for every connection that Accept gave a server.
	Done(c *Conn, in, out int64, err error)
	// AcceptFailed says an accept failed for a reason of the host (out of
	// descriptors or memory): the listener rests for retry.
	AcceptFailed(err error, retry time.Duration)
}

// A Decision is what a Service does with a connection.
type Decision struct {
	// Server is a socket connecting to the chosen server (from Dial): the
	// loop owns it from here. -1: no server; the client's socket is
	// closed, with a reset when Reset (Done follows unless this is
	// Accept's decision).
	Server int
	Reset  bool
	// Header is sent to the server before the client's bytes (a PROXY
	// protocol header).
	Header []byte
	// ConnectTimeout bounds the connect; Idle ends a connection silent
	// both ways that long (0: never).
	ConnectTimeout, Idle time.Duration
	// Handoff, when set, takes the client's socket: the loop forgets it.
	Handoff func(fd int)
}

// Refuse is the Decision that closes the client's connection.
var Refuse = Decision{Server: -1}

// ErrConnectTimeout ends a connect that took longer than its timeout.
var ErrConnectTimeout = errors.New("connect timeout")

// ErrStopped ends the connections CloseAll closes.
var ErrStopped = errors.New("closed by a stop")

// Loops are the event loops: connections are served by the loop that
// accepted them.
type Loops struct {
	loops  []*loop
	bal    balancer
	mu     sync.Mutex // serialises Listen, stop and Close
	nextID int32
	closed bool
}

// New starts n loops (n < 1: one per CPU the Go runtime uses), whose
// connections borrow splice pipes from relay's bounded pool.
func New(n int, relay *tcprelay.Relay) (*Loops, error) {
	if n < 1 {
		n = runtime.GOMAXPROCS(0)
	}
	ls := &Loops{}
	for range n {
		l, err := newLoop(relay)
		if err != nil {
			ls.Close()
			return nil, err
		}
		ls.loops = append(ls.loops, l)
	}
	ls.bal.loops = ls.loops
	for _, l := range ls.loops {
		l.bal = &ls.bal
		go l.run()
	}
	return ls, nil
}

// Listen accepts the connections of lns, for svc, until the returned stop
// is called; the caller closes lns after stop. With a listener for each
// loop (SO_REUSEPORT siblings) each loop accepts from its own, and the
// kernel spreads connections; otherwise every loop accepts from each.
func (ls *Loops) Listen(lns []*net.TCPListener, svc Service) (stop func(), err error) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.closed {
		return nil, net.ErrClosed
	}
	type added struct {
		l  *loop
		id int32
	}
	var done []added
	undo := func() {
		for _, a := range done {
			a.l.do(func() { a.l.removeListener(a.id) })
		}
	}
	for i, l := range ls.loops {
		mine := lns
		if len(lns) == len(ls.loops) {
			mine = lns[i : i+1]
		}
		for _, ln := range mine {
			rc, err := ln.SyscallConn()
			if err == nil {
				err = setNoDelay(rc)
			}
			if err != nil {
				undo()
				return nil, err
			}
			ls.nextID++
			lis := &listener{id: ls.nextID, rc: rc, svc: svc}
			var aerr error
			l.do(func() { aerr = l.addListener(lis) })
			if aerr != nil {
				undo()
				return nil, aerr
			}
			done = append(done, added{l, lis.id})
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			ls.mu.Lock()
			defer ls.mu.Unlock()
			undo()
		})
	}, nil
}

// CloseAll ends every open connection (a stop past its drain deadline):
// each Service's Done sees ErrStopped.
func (ls *Loops) CloseAll() {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, l := range ls.loops {
		l.do(func() { l.closeAll(ErrStopped) })
	}
}

// Open is the number of connections open on all loops.
func (ls *Loops) Open() int {
	n := 0
	for _, l := range ls.loops {
		n += int(l.open.Load())
	}
	return n
}

// Close ends every connection and stops the loops; it returns once their
// goroutines have.
func (ls *Loops) Close() {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.closed {
		return
	}
	ls.closed = true
	ls.bal.close()
	for _, l := range ls.loops {
		l.do(func() { l.closeAll(ErrStopped); l.forgetWatches(); l.stopped = true })
		<-l.done
		l.drainHandoffs(false)
		l.release()
	}
}

// Event data: a connection's socket is slot*2+side in Fd with its
// generation in Pad; the rest are marked by a negative Pad.
const (
	padListener = -1
	padWake     = -2
	padWatch    = -3 // Fd is the watch's slot
)

// Bounds of the work one wake does, so that one busy listener or
// connection does not starve the others.
const (
	acceptBatch = 16
	eventBatch  = 128
	// tick is how often timeouts are looked at: a connect or idle timeout
	// fires within a tick of its time.
	tick = 100 * time.Millisecond
)

// loop is one event loop: its epoll set, waited on directly for a moment
// after work and otherwise parked in the Go runtime's poller.
type loop struct {
	// acceptFn accepts from the listener whose descriptor it is given
	// into accepted; made once, as a closure made per accept escaped to
	// the heap.
	acceptFn func(fd uintptr)
	accepted struct {
		fd  int
		src netip.AddrPort
		err error
	}
	relay *tcprelay.Relay
	ep    int // the epoll set
	wake  int // an eventfd in the set: commands are waiting
	// park is an epoll instance that holds ep only while the loop is
	// parked, registered with the Go runtime's poller as file: with ep
	// itself registered there, every event in the set woke the runtime's
	// poller thread while the loop was awake to take it (two needless
	// wake-ups of another thread a request/response round trip).
	park int
	file *os.File // park
	rc   syscall.RawConn
	cmds chan func()
	done chan struct{}
	// bal is shared by the loops; handoffs are connections other loops
	// accepted for this one, incoming how many are on their way.
	bal      *balancer
	handoffs chan handoff
	incoming atomic.Int64

	// Owned by the loop's goroutine:
	stopped   bool
	listeners map[int32]*loopListener
	slots     []*Conn
	free      []int32
	gen       uint32   // the last connection's generation
	bufs      [][]byte // idle copy buffers
	now       int64    // unix nanos, read once a wake
	nextTick  int64
	deadline  int64 // the poller's read deadline in force (0: none)
	events    [eventBatch]unix.EpollEvent
	watches   []*Watch // by slot (watch.go)
	wfree     []int32
	ticking   int // watches with ticks

	open     atomic.Int64 // connections open (read by Loops.Open)
	watching atomic.Int64 // watches (read by Loops.Watch, to choose a loop)
}

func newLoop(relay *tcprelay.Relay) (*loop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(ep)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Pad: padWake}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	park, err := newParkSet(ep)
	if err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return nil, err
	}
	l := &loop{relay: relay, ep: ep, wake: wake, park: park, file: os.NewFile(uintptr(park), "epoll"), cmds: make(chan func(), 4), handoffs: make(chan handoff, handoffQueue), done: make(chan struct{}), listeners: map[int32]*loopListener{}}
	l.acceptFn = func(fd uintptr) {
		// Its own, not x/sys/unix's: that one also asks every IPv4
		// socket's protocol (SO_PROTOCOL) to tell L2TP apart.
		l.accepted.fd, l.accepted.src, l.accepted.err = rawAccept4(int(fd))
	}
	if l.rc, err = l.file.SyscallConn(); err != nil {
		l.release()
		return nil, err
	}
	return l, nil
}

// release closes the loop's descriptors once its goroutine has returned.
func (l *loop) release() {
	l.file.Close()
	unix.Close(l.ep)
	unix.Close(l.wake)
}

// do runs f on the loop and returns when it has run.
func (l *loop) do(f func()) {
	ran := make(chan struct{})
	select {
	case l.cmds <- func() { f(); close(ran) }:
	case <-l.done:
		return
	}
	l.wakeUp()
	select {
	case <-ran:
	case <-l.done:
	}
}

// wakeUp makes the loop look at its commands and handoffs.
func (l *loop) wakeUp() {
	var one = [8]byte{1}
	unix.Write(l.wake, one[:]) // refused only when the counter is full: it is woken all the same
}

func (l *loop) resting() bool {
	for _, ll := range l.listeners {
		if ll.restUntil != 0 {
			return true
		}
	}
	return false
}

func (l *loop) dispatch(ev *unix.EpollEvent) {
	switch ev.Pad {
	case padWake:
		var b [8]byte
		unix.Read(l.wake, b[:])
		l.drainHandoffs(true)
		for {
			select {
			case f := <-l.cmds:
				f()
				continue
			default:
			}
			return
		}
	case padWatch:
		l.readable(ev.Fd)
	case padListener:
		if ll := l.listeners[ev.Fd]; ll != nil && ll.restUntil == 0 {
			l.accept(ll)
		}
	default:
		slot := ev.Fd >> 1
		if int(slot) >= len(l.slots) {
			return
		}
		c := l.slots[slot]
		if c == nil || int32(c.gen) != ev.Pad {
			return // a connection closed earlier in this batch
		}
		l.event(c, ev.Fd&1 == 1, ev.Events)
	}
}

// sweep ends connects and connections past their timeouts and puts rested
// listeners back.
func (l *loop) sweep() {
	next := l.now + int64(tick)
	for _, ll := range l.listeners {
		if ll.restUntil == 0 {
			continue
		}
		if ll.restUntil > l.now {
			next = min(next, ll.restUntil)
			continue
		}
		ll.restUntil = 0
		if err := l.register(ll); err != nil {
			ll.restUntil = l.now + int64(time.Second)
			ll.svc.AcceptFailed(err, time.Second)
		}
	}
	for _, c := range l.slots {
		if c == nil {
			continue
		}
		switch {
		case c.connecting && l.now >= c.connectBy:
			l.connectFailed(c, ErrConnectTimeout)
		case !c.connecting && c.idle > 0 && l.now-c.last >= c.idle:
			l.end(c, tcprelay.ErrIdle)
		}
	}
	l.tickWatches()
	l.nextTick = next
}

// closeAll ends every connection of the loop with err.
func (l *loop) closeAll(err error) {
	for _, c := range l.slots {
		if c != nil {
			l.end(c, err)
		}
	}
}
