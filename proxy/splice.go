package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// pipe copies both ways until both directions are done and returns the
// bytes from the client (in) and to it (out). Each direction is io.Copy
// between two *net.TCPConn, which the runtime runs as splice(2); at EOF
// the direction is half-closed with CloseWrite, so a client that shuts
// down its sending side still gets the whole reply. An error in one
// direction aborts both.
func pipe(client, backend *net.TCPConn, idle time.Duration) (in, out int64) {
	var idleA, idleB atomic.Bool
	var ended atomic.Int32
	done := make(chan int64, 1)
	go func() { done <- copyHalf(backend, client, idle, &idleA, &idleB, &ended) }()
	out = copyHalf(client, backend, idle, &idleB, &idleA, &ended)
	in = <-done
	client.Close()
	backend.Close()
	return in, out
}

// idleChunk bounds one splice run when an idle timeout is set, so that the
// deadline is re-armed as long as bytes flow (io.CopyN keeps splice: the
// runtime splices from an *io.LimitedReader of a *net.TCPConn).
const idleChunk = 256 << 10

// copyHalf copies src to dst, then half-closes dst; ended counts the
// directions done. With an idle timeout,
// a direction that saw no byte for the timeout marks itself idle, and the
// connection is closed when the other direction is idle too.
func copyHalf(dst, src *net.TCPConn, idle time.Duration, self, other *atomic.Bool, ended *atomic.Int32) int64 {
	if idle <= 0 {
		n, err := io.Copy(dst, src)
		finish(dst, src, err, ended)
		return n
	}
	var total int64
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		n, err := io.CopyN(dst, src, idleChunk)
		total += n
		if n > 0 {
			self.Store(false)
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, os.ErrDeadlineExceeded) && n == 0:
			self.Store(true)
			if !other.Load() {
				continue
			}
			err = errIdle
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue
		case errors.Is(err, io.EOF):
			err = nil
			// A direction that ended counts as idle, so that the other
			// one's idle timeout ends a half-closed connection.
			self.Store(true)
		}
		finish(dst, src, err, ended)
		return total
	}
}

var errIdle = errors.New("idle timeout")

// finish ends one direction: a clean EOF half-closes, an error aborts both.
// The second direction to end skips the half-close: pipe closes both
// sockets next, and the close sends the FIN (a system call less for every
// connection; both receive queues are drained, so it is a FIN, not a RST).
func finish(dst, src *net.TCPConn, err error, ended *atomic.Int32) {
	last := ended.Add(1) == 2
	if err == nil {
		if !last {
			dst.CloseWrite()
		}
		return
	}
	dst.Close()
	src.Close()
}
