package acceptloop

import (
	"errors"
	"net"
	"time"
)

// Loop is one listener's accept loop.
type Loop struct {
	Accept func() (*net.TCPConn, error)
	Serve  func(*net.TCPConn)
	// Failed is told of each accept error, before the back-off.
	Failed func(err error, retry time.Duration)
	// Sleep waits out the back-off: time.Sleep, or a test's recorder.
	Sleep func(time.Duration)
}

// Back-off after a failed accept, as net/http's: from acceptBackoffMin,
// doubling, to acceptBackoffMax.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// Run accepts until the listener is closed. A failed accept (EMFILE,
// ENFILE, ENOBUFS: the host is short of something) backs off instead of
// spinning: a loop that retried at once took more than a core while
// descriptors were short.
func (a Loop) Run() {
	var delay time.Duration
	for {
		c, err := a.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			a.Failed(err, delay)
			a.Sleep(delay)
			continue
		}
		delay = 0
		a.Serve(c)
	}
}
