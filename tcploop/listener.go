package tcploop

import (
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// setNoDelay sets TCP_NODELAY on a listener: the sockets it accepts
// inherit it (Linux copies the listener's TCP state into each), one
// system call a listener instead of one a connection.
func setNoDelay(rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}); err != nil {
		return err
	}
	return serr
}

// listener is a listening socket some loops accept from.
type listener struct {
	id  int32
	rc  syscall.RawConn // holds the descriptor open while an accept runs
	svc Service
}

// loopListener is a loop's view of a listener.
type loopListener struct {
	*listener
	restUntil int64 // unix nanos; 0: in the epoll set
	backoff   time.Duration
}

// addListener puts lis in the loop's epoll set.
func (l *loop) addListener(lis *listener) error {
	ll := &loopListener{listener: lis}
	if err := l.register(ll); err != nil {
		return err
	}
	l.listeners[lis.id] = ll
	return nil
}

func (l *loop) register(ll *loopListener) error {
	var err error
	cerr := ll.rc.Control(func(fd uintptr) {
		// Level-triggered: a listener left with connections waiting (a
		// full batch) is reported again.
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: ll.id, Pad: padListener}
		err = unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if cerr != nil {
		return cerr
	}
	return os.NewSyscallError("epoll_ctl", err)
}

func (l *loop) unregister(ll *loopListener) {
	ll.rc.Control(func(fd uintptr) { unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, int(fd), nil) })
}

// removeListener takes a listener out of the loop; its connections stay.
func (l *loop) removeListener(id int32) {
	ll := l.listeners[id]
	if ll == nil {
		return
	}
	delete(l.listeners, id)
	if ll.restUntil == 0 {
		l.unregister(ll)
	}
}

// accept takes up to acceptBatch connections from ll.
func (l *loop) accept(ll *loopListener) {
	for range acceptBatch {
		if cerr := ll.rc.Control(l.acceptFn); cerr != nil {
			return // closed: its stop follows
		}
		nfd, src, err := l.accepted.fd, l.accepted.src, l.accepted.err
		switch err {
		case nil:
			ll.backoff = 0
			if t := l.lighter(); t == nil || !l.bal.handOver(t, handoff{ll.svc, nfd, src}) {
				l.serve(ll.svc, nfd, src)
			}
			continue
		case unix.EAGAIN:
			return
		case unix.EINTR, unix.ECONNABORTED, unix.EPROTO:
			continue // this one connection is gone
		}
		// Out of descriptors, buffers or memory: rest the listener, 5 ms
		// doubling to 1 s (net/http's backoff), instead of spinning on it.
		ll.backoff = min(max(2*ll.backoff, 5*time.Millisecond), time.Second)
		l.unregister(ll)
		ll.restUntil = l.now + int64(ll.backoff)
		l.nextTick = min(l.nextTick, ll.restUntil)
		ll.svc.AcceptFailed(os.NewSyscallError("accept4", err), ll.backoff)
		return
	}
}
