package tcprelay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The TCP copy, one goroutine a direction. A direction waits for its
// source to be readable holding nothing, then reads into a pooled buffer
// and writes what it read: a small message costs one read and one write,
// and an idle connection holds no buffer and no pipe. A direction whose
// read fills the buffer carries bulk: it takes a pipe from the proxy's
// bounded pool (at most one per connection) and moves the rest with
// splice(2), so the bytes never enter user space (HAProxy's splice-auto).
// The pipe goes back when the direction ends. A connection holds at most
// four descriptors: its two sockets and one pipe.

// copyBuf is a direction's read buffer: a read that fills it means bulk.
const copyBuf = 16 << 10

// pipeSize is what a pipe is grown to (fs.pipe-max-size allows 1 MiB to
// anyone), and spliceChunk bounds one splice into it: a bulk transfer moves
// up to a megabyte a system call, as the Go runtime's own splice does.
const (
	pipeSize    = 1 << 20
	spliceChunk = pipeSize
)

// Relay copies TCP connections: its buffers and its bounded pipe pool are
// shared by all of them.
type Relay struct {
	bufs  sync.Pool // *[copyBuf]byte: a direction borrows one per read
	pipes *pipePool
	// maxPipes is the pipe bound in force (budget.Caps.Pipes).
	maxPipes func() int
}

// New makes a Relay whose pipes are bounded by maxPipes, read at each
// lend.
func New(maxPipes func() int) *Relay {
	r := &Relay{pipes: newPipePool(), maxPipes: maxPipes}
	r.bufs.New = func() any { return new([copyBuf]byte) }
	return r
}

// Close closes the idle pipes; pipes lent now are closed as they come
// back.
func (r *Relay) Close() { r.pipes.close() }

// Pipes is the number of pipes open, lent or idle.
func (r *Relay) Pipes() int { return int(r.pipes.open.Load()) }

// ErrIdle ends a connection silent both ways for its idle timeout.
var ErrIdle = errors.New("idle timeout")

// Copy copies both ways until both directions are done and returns the
// bytes from the client (in) and to it (out), and the error that ended a
// direction first, if any (ErrIdle for the idle timeout). At EOF a
// direction is half-closed with CloseWrite, so a client that shuts down its
// sending side still gets the whole reply. An error in one direction
// aborts both. Both connections are closed when it returns.
func (r *Relay) Copy(client, backend *net.TCPConn, idle time.Duration) (in, out int64, err error) {
	c := &connCopy{r: r, idle: idle}
	done := make(chan int64, 1)
	go func() { done <- c.half(backend, client, &c.clientIdle, &c.backendIdle) }()
	out = c.half(client, backend, &c.backendIdle, &c.clientIdle)
	in = <-done
	client.Close()
	backend.Close()
	if e := c.err.Load(); e != nil {
		err = *e
	}
	return in, out, err
}

// connCopy is one connection's two directions.
type connCopy struct {
	r    *Relay
	idle time.Duration
	// clientIdle and backendIdle: that direction saw no byte for the idle
	// timeout, or has ended; the connection ends when both are.
	clientIdle, backendIdle atomic.Bool
	ended                   atomic.Int32          // directions done
	piped                   atomic.Bool           // a direction holds the connection's pipe
	err                     atomic.Pointer[error] // the first error that ended a direction
}

// half copies src to dst until src ends or the connection does, then
// half-closes dst (or aborts both on an error), and returns the bytes.
func (c *connCopy) half(dst, src *net.TCPConn, self, other *atomic.Bool) int64 {
	srcRC, err1 := src.SyscallConn()
	dstRC, err2 := dst.SyscallConn()
	if err := errors.Join(err1, err2); err != nil {
		finish(dst, src, err, &c.ended)
		return 0
	}
	var sp *Pipe
	defer func() {
		if sp != nil {
			c.r.pipes.put(sp)
			c.piped.Store(false)
		}
	}()
	var total int64
	for {
		if c.idle > 0 {
			src.SetReadDeadline(time.Now().Add(c.idle))
		}
		var n int
		var err error
		if sp != nil {
			n, err = sp.move(dstRC, srcRC)
		} else {
			var full bool
			n, full, err = c.copyBuffered(dst, srcRC)
			if full && c.piped.CompareAndSwap(false, true) {
				if sp = c.r.pipes.get(c.r.maxPipes()); sp == nil {
					c.piped.Store(false) // none free: go on through the buffer
				}
			}
		}
		total += int64(n)
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
			err = ErrIdle
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue
		case errors.Is(err, io.EOF):
			err = nil
			// A direction that ended counts as idle, so that the other
			// one's idle timeout ends a half-closed connection.
			self.Store(true)
		}
		if err != nil {
			c.err.CompareAndSwap(nil, &err)
		}
		finish(dst, src, err, &c.ended)
		return total
	}
}

// copyBuffered waits for src to be readable, reads into a pooled buffer
// and writes it all to dst. full says the read filled the buffer.
func (c *connCopy) copyBuffered(dst *net.TCPConn, src syscall.RawConn) (n int, full bool, err error) {
	var buf *[copyBuf]byte
	var rerr error
	err = src.Read(func(fd uintptr) bool {
		if buf == nil {
			buf = c.r.bufs.Get().(*[copyBuf]byte)
		}
		n, rerr = unix.Read(int(fd), buf[:])
		if rerr == unix.EAGAIN { // nothing yet: wait without the buffer
			c.r.bufs.Put(buf)
			buf = nil
			return false
		}
		return true
	})
	if buf != nil {
		defer c.r.bufs.Put(buf)
	}
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, false, err
	}
	if n <= 0 {
		return 0, false, io.EOF
	}
	if _, err := dst.Write(buf[:n]); err != nil {
		return n, false, err
	}
	return n, n == copyBuf, nil
}

// finish ends one direction: a clean EOF half-closes, an error aborts both.
// The second direction to end skips the half-close: Copy closes both
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

// Pipe is a pipe for splice(2): its read and write ends, and how many
// bytes it holds.
type Pipe struct {
	R, W int
	Data int
}

// LendPipe lends a pipe from the bounded pool, or nil when the bound is
// reached (or the kernel refused one): the caller goes on through a
// buffer. Package tcploop's connections borrow here too, so one bound
// covers both data paths.
func (r *Relay) LendPipe() *Pipe { return r.pipes.get(r.maxPipes()) }

// ReturnPipe gives a lent pipe back: an empty one may be kept for the next
// lend, one that still holds bytes is closed.
func (r *Relay) ReturnPipe(p *Pipe) { r.pipes.put(p) }

// move splices what src has (waiting until it has something, up to
// spliceChunk) into the pipe, and all of it on to dst.
func (sp *Pipe) move(dst, src syscall.RawConn) (int, error) {
	var n int64
	var serr error
	err := src.Read(func(fd uintptr) bool {
		n, serr = unix.Splice(int(fd), nil, sp.W, nil, spliceChunk, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	sp.Data += int(n)
	for sp.Data > 0 {
		var m int64
		var werr error
		err := dst.Write(func(fd uintptr) bool {
			m, werr = unix.Splice(sp.R, nil, int(fd), nil, sp.Data, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			return werr != unix.EAGAIN
		})
		if err == nil {
			err = werr
		}
		if err != nil {
			return int(n), err // the pipe still holds bytes: put closes it
		}
		sp.Data -= int(m)
	}
	return int(n), nil
}

// pipePool lends splice pipes: at most a bound at once (the Relay's
// maxPipes, counted in descriptors with the rest), and keeps a few idle ones for
// reuse; the others are closed as soon as they come back, so a burst of
// bulk transfers leaves no descriptors behind.
type pipePool struct {
	open atomic.Int64 // pipes in existence, lent or idle
	idle chan *Pipe
	mu   sync.Mutex // serialises close with put
	done bool
}

// PipesIdle is how many idle pipes the pool keeps.
const PipesIdle = 32

func newPipePool() *pipePool { return &pipePool{idle: make(chan *Pipe, PipesIdle)} }

// get lends a pipe, or nil when max are out (or the kernel refused one).
func (pp *pipePool) get(max int) *Pipe {
	select {
	case sp := <-pp.idle:
		return sp
	default:
	}
	if pp.open.Add(1) > int64(max) {
		pp.open.Add(-1)
		return nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		pp.open.Add(-1)
		return nil
	}
	unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeSize) // refused: the default size serves
	return &Pipe{R: fds[0], W: fds[1]}
}

// put takes a pipe back: an empty one is kept if there is room, any other
// is closed.
func (pp *pipePool) put(sp *Pipe) {
	pp.mu.Lock()
	keep := !pp.done && sp.Data == 0
	if keep {
		select {
		case pp.idle <- sp:
		default:
			keep = false
		}
	}
	pp.mu.Unlock()
	if !keep {
		pp.closePipe(sp)
	}
}

func (pp *pipePool) closePipe(sp *Pipe) {
	unix.Close(sp.R)
	unix.Close(sp.W)
	pp.open.Add(-1)
}

// close closes the idle pipes; pipes lent now are closed when they come
// back.
func (pp *pipePool) close() {
	pp.mu.Lock()
	pp.done = true
	var all []*Pipe
	for {
		select {
		case sp := <-pp.idle:
			all = append(all, sp)
			continue
		default:
		}
		break
	}
	pp.mu.Unlock()
	for _, sp := range all {
		pp.closePipe(sp)
	}
}
