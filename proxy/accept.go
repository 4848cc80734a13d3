package proxy

import (
	"errors"
	"log/slog"
	"net"
	"time"
)

// acceptor is one listener's accept loop: the socket proxy's and the
// transparent listeners' alike.
type acceptor struct {
	accept func() (*net.TCPConn, error)
	serve  func(*net.TCPConn)
	// failed is told of each accept error, before the back-off.
	failed func(err error, retry time.Duration)
	sleep  func(time.Duration) // time.Sleep; tests record the delays
}

// Back-off after a failed accept, as net/http's: from acceptBackoffMin,
// doubling, to acceptBackoffMax.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// run accepts until the listener is closed. A failed accept (EMFILE,
// ENFILE, ENOBUFS: the host is short of something) backs off instead of
// spinning: a loop that retried at once took more than a core while
// descriptors were short.
func (a acceptor) run() {
	var delay time.Duration
	for {
		c, err := a.accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			a.failed(err, delay)
			a.sleep(delay)
			continue
		}
		delay = 0
		a.serve(c)
	}
}

// acceptFailed counts and logs (at most once a second) a failed accept.
func (p *Proxy) acceptFailed(listener string) func(error, time.Duration) {
	return func(err error, retry time.Duration) {
		p.count("connections", "accept_errors", 1, nil)
		p.rlog.Log(slog.LevelError, "accept failed; backing off", "listener", listener, "err", err, "retry_in", retry)
	}
}
