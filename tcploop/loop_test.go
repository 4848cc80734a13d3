package tcploop

import (
	"bytes"
	"crypto/md5"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tetherlb/tether/tcprelay"
	"golang.org/x/sys/unix"
)

// testService sends every connection to servers in order: the first
// decision to servers[0], each failure to the next.
type testService struct {
	t       *testing.T
	servers []netip.AddrPort
	idle    time.Duration
	header  []byte
	refuse  bool
	dial    func(netip.AddrPort) (int, error) // Dial unless set
	// waitData: Accept decides once the client's first bytes are in.
	waitData bool
	// inAtConnect: the client's bytes read when Connected was called.
	inAtConnect chan int64

	accepted, connected atomic.Int64
	failures            chan error
	done                chan result
}

type result struct {
	src     netip.AddrPort
	in, out int64
	err     error
}

func newService(t *testing.T, servers ...netip.AddrPort) *testService {
	return &testService{t: t, servers: servers, failures: make(chan error, 100), done: make(chan result, 10000)}
}

func (s *testService) decide(c *Conn, i int) Decision {
	if i >= len(s.servers) {
		return Refuse
	}
	c.Data = i
	dial := Dial
	if s.dial != nil {
		dial = s.dial
	}
	fd, err := dial(s.servers[i])
	if err != nil {
		s.t.Errorf("dial %s: %v", s.servers[i], err)
		return Refuse
	}
	return Decision{Server: fd, Header: s.header, Idle: s.idle, ConnectTimeout: time.Second}
}

func (s *testService) Accept(c *Conn) Decision {
	s.accepted.Add(1)
	if s.waitData {
		fds := []unix.PollFd{{Fd: int32(c.cfd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 5000); n != 1 || err != nil {
			s.t.Errorf("the client's bytes never came: %d, %v", n, err)
		}
	}
	if s.refuse {
		return Decision{Server: -1, Reset: true}
	}
	return s.decide(c, 0)
}

func (s *testService) Failed(c *Conn, err error) Decision {
	s.failures <- err
	return s.decide(c, c.Data.(int)+1)
}

func (s *testService) Connected(c *Conn) {
	s.connected.Add(1)
	if s.inAtConnect != nil {
		s.inAtConnect <- c.in
	}
}
func (s *testService) AcceptFailed(err error, _ time.Duration) { s.t.Errorf("accept failed: %v", err) }
func (s *testService) Done(c *Conn, in, out int64, err error) {
	s.done <- result{c.Src(), in, out, err}
}

// rig is loops with one listener, stopped and closed with the test.
type rig struct {
	ls    *Loops
	addr  string
	relay *tcprelay.Relay
	ln    *net.TCPListener
	stop  func()
}

// setup runs n loops with a listener for svc.
func setup(t *testing.T, n int, svc Service) rig {
	t.Helper()
	r := rig{relay: tcprelay.New(func() int { return 16 })}
	var err error
	if r.ls, err = New(n, r.relay); err != nil {
		t.Fatal(err)
	}
	if r.ln, err = net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	if r.stop, err = r.ls.Listen([]*net.TCPListener{r.ln}, svc); err != nil {
		t.Fatal(err)
	}
	r.addr = r.ln.Addr().String()
	t.Cleanup(func() {
		r.stop()
		r.ln.Close()
		r.ls.Close()
		r.relay.Close()
		if r.relay.Pipes() != 0 {
			t.Errorf("%d pipes left open", r.relay.Pipes())
		}
	})
	return r
}

// backend serves each connection with f until the test ends.
func backend(t *testing.T, f func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); f(c) }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// md5Server reads to EOF, then sends back n random bytes followed by the
// md5 of what it read.
func md5Server(n int) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		h := md5.New()
		if _, err := io.Copy(h, c); err != nil {
			return
		}
		rnd := rand.NewChaCha8([32]byte{1})
		io.CopyN(c, rnd, int64(n))
		c.Write(h.Sum(nil))
	}
}

func closeWait(t *testing.T, s *testService) result {
	t.Helper()
	select {
	case r := <-s.done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not end")
	}
	return result{}
}

// Bulk both ways, md5-exact, with the client's half-close passed on: the
// server replies only after the client's EOF. The sizes cross the buffer
// size, so both directions move to splice pipes.
func TestBulkBothWaysExact(t *testing.T) {
	for _, size := range []int{1, 100, copyBuf, 8 << 20} {
		srv := backend(t, md5Server(size))
		svc := newService(t, srv)
		r := setup(t, 2, svc)
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		sent := md5.New()
		data := make([]byte, size)
		rand.NewChaCha8([32]byte{2}).Read(data)
		sent.Write(data)
		go func() {
			c.Write(data)
			c.(*net.TCPConn).CloseWrite()
		}()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, size)
		rand.NewChaCha8([32]byte{1}).Read(want)
		want = append(want, sent.Sum(nil)...)
		if !bytes.Equal(got, want) {
			t.Fatalf("size %d: got %d bytes back, not the server's %d (or the server saw other bytes than sent)", size, len(got), len(want))
		}
		res := closeWait(t, svc)
		if res.err != nil || res.in != int64(size) || res.out != int64(len(want)) {
			t.Fatalf("size %d: Done(in %d, out %d, %v), want in %d, out %d, nil", size, res.in, res.out, res.err, size, len(want))
		}
		// A pipe lent to a bulk direction is kept idle in the pool after.
		if bulk := size >= copyBuf; bulk != (r.relay.Pipes() > 0) {
			t.Fatalf("size %d: %d pipes open after the copy: bulk went through splice: %v", size, r.relay.Pipes(), !bulk)
		}
	}
}

// Many short connections at once from several goroutines, each a request
// and a reply; every one succeeds and the loops end with none open.
func TestManyShortConnections(t *testing.T) {
	srv := backend(t, func(c *net.TCPConn) {
		b := make([]byte, 64)
		n, _ := c.Read(b)
		c.Write(b[:n])
	})
	svc := newService(t, srv)
	r := setup(t, 2, svc)
	ls, addr := r.ls, r.addr
	const workers, each = 16, 100
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					failed.Add(1)
					continue
				}
				msg := []byte{byte(w), byte(i)}
				c.Write(msg)
				got := make([]byte, 2)
				if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
					failed.Add(1)
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d connections failed", failed.Load(), workers*each)
	}
	for range workers * each {
		closeWait(t, svc)
	}
	if n := ls.Open(); n != 0 {
		t.Fatalf("%d connections still open", n)
	}
}

// A refused connect goes to the Service's Failed, and its next server
// serves the client.
func TestConnectFailureTriesTheNextServer(t *testing.T) {
	dead := backend(t, func(*net.TCPConn) {})
	// A port nobody listens on: take one, then free it.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()
	_ = dead
	good := backend(t, md5Server(10))
	svc := newService(t, refused, good)
	addr := setup(t, 1, svc).addr
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(c)
	c.Close()
	if len(got) != 10+md5.Size {
		t.Fatalf("got %d bytes, want %d from the second server", len(got), 10+md5.Size)
	}
	if err := <-svc.failures; !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Failed saw %v, want ECONNREFUSED", err)
	}
	if r := closeWait(t, svc); r.err != nil {
		t.Fatal(r.err)
	}
}

// The client's first bytes, in before it was accepted, go to the server
// with the connect: by the time the connect is known to have worked they
// are read and sent. When the first server refuses, they go to the next
// one, exactly.
func TestFirstBytesGoWithTheConnect(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()
	good := backend(t, md5Server(10))
	for _, servers := range [][]netip.AddrPort{{good}, {refused, good}} {
		svc := newService(t, servers...)
		svc.waitData, svc.inAtConnect = true, make(chan int64, 1)
		addr := setup(t, 1, svc).addr
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		first := []byte("GET / HTTP/1.1\r\n\r\n")
		c.Write(first)
		if in := <-svc.inAtConnect; in != int64(len(first)) {
			t.Errorf("servers %v: %d of the client's %d bytes read when the connect was known, want all", servers, in, len(first))
		}
		c.(*net.TCPConn).CloseWrite()
		got, _ := io.ReadAll(c)
		c.Close()
		if sum := md5.Sum(first); len(got) != 10+md5.Size || !bytes.Equal(got[10:], sum[:]) {
			t.Fatalf("servers %v: got %d bytes, want 10 and the md5 of what the client sent", servers, len(got))
		}
		if len(servers) > 1 {
			if err := <-svc.failures; !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("Failed saw %v, want ECONNREFUSED", err)
			}
		}
		if r := closeWait(t, svc); r.err != nil || r.in != int64(len(first)) {
			t.Fatalf("done: %d bytes in, %v", r.in, r.err)
		}
	}
}

// A connect that never completes ends at its timeout (a pipe stands for a
// socket that never turns writable) and the Service is asked for the next
// server; with none left the client's connection is closed and Done says
// why.
func TestConnectTimeout(t *testing.T) {
	svc := newService(t, netip.MustParseAddrPort("127.0.0.1:1"))
	svc.dial = func(netip.AddrPort) (int, error) {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
			return -1, err
		}
		t.Cleanup(func() { unix.Close(p[1]) })
		return p[0], nil
	}
	addr := setup(t, 1, svc).addr
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if err := <-svc.failures; !errors.Is(err, ErrConnectTimeout) {
		t.Fatalf("Failed saw %v, want ErrConnectTimeout", err)
	}
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Fatalf("the connect timed out after %v, before its 1 s", el)
	}
	if r := closeWait(t, svc); !errors.Is(r.err, ErrConnectTimeout) {
		t.Fatalf("Done saw %v", r.err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the client's connection is still open")
	}
}

// A connection silent both ways for its idle timeout ends with
// tcprelay.ErrIdle; one that keeps talking does not.
func TestIdleTimeout(t *testing.T) {
	srv := backend(t, func(c *net.TCPConn) { io.Copy(c, c) })
	svc := newService(t, srv)
	svc.idle = 300 * time.Millisecond
	addr := setup(t, 1, svc).addr
	talker, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer talker.Close()
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	stop := make(chan struct{})
	talked := make(chan error, 1)
	go func() {
		b := []byte{1}
		for {
			select {
			case <-stop:
				talked <- nil
				return
			case <-time.After(50 * time.Millisecond):
			}
			talker.Write(b)
			if _, err := io.ReadFull(talker, b); err != nil {
				talked <- err
				return
			}
		}
	}()
	r := closeWait(t, svc)
	close(stop)
	if err := <-talked; err != nil {
		t.Fatalf("the talking connection failed: %v", err)
	}
	if !errors.Is(r.err, tcprelay.ErrIdle) || r.src != silent.LocalAddr().(*net.TCPAddr).AddrPort() {
		t.Fatalf("Done(%v, %v): want the silent connection's idle timeout", r.src, r.err)
	}
	if _, err := silent.Read(make([]byte, 1)); err == nil {
		t.Fatal("the idle connection is still open")
	}
}

// A header goes to the server before the client's bytes.
func TestHeaderFirst(t *testing.T) {
	got := make(chan []byte, 1)
	srv := backend(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		got <- b
	})
	svc := newService(t, srv)
	svc.header = []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
	addr := setup(t, 1, svc).addr
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello"))
	c.(*net.TCPConn).CloseWrite()
	if b, want := <-got, string(svc.header)+"hello"; string(b) != want {
		t.Fatalf("the server read %q, want %q", b, want)
	}
	c.Close()
	if r := closeWait(t, svc); r.in != 5 {
		t.Fatalf("in = %d, want the client's 5 bytes (the header is not the client's)", r.in)
	}
}

// A refusal with Reset resets the client's connection. On loopback the
// reset can come before the dialer has read its connect's result, which
// then is the reset.
func TestRefuseWithReset(t *testing.T) {
	svc := newService(t)
	svc.refuse = true
	addr := setup(t, 1, svc).addr
	c, err := net.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read: %v, want a reset", err)
	}
}

// CloseAll ends open connections with ErrStopped; a stopped listener
// takes no more connections while its open ones go on.
func TestCloseAllAndStop(t *testing.T) {
	srv := backend(t, func(c *net.TCPConn) { io.Copy(c, c) })
	svc := newService(t, srv)
	r := setup(t, 2, svc)
	ls, ln, stop := r.ls, r.ln, r.stop
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo := func() error {
		c.Write([]byte{7})
		b := []byte{0}
		_, err := io.ReadFull(c, b)
		return err
	}
	if err := echo(); err != nil {
		t.Fatal(err)
	}
	stop()
	ln.Close()
	if err := echo(); err != nil {
		t.Fatalf("an open connection stopped with its listener: %v", err)
	}
	if c2, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c2.Close()
		t.Fatal("a stopped listener still accepts")
	}
	ls.CloseAll()
	if r := closeWait(t, svc); !errors.Is(r.err, ErrStopped) {
		t.Fatalf("Done saw %v, want ErrStopped", r.err)
	}
	if ls.Open() != 0 {
		t.Fatal("connections left open")
	}
}

// After work a loop waits in its own epoll set holding its thread and
// processor, but only for a moment: with nothing more to do it parks in
// the runtime's poller ("IO wait" in a goroutine dump), so that an idle
// loop leaves its processor to the rest of the program. Parked, it wakes
// for the next connection (the set's events reach the runtime's poller
// while it is parked) and serves it.
func TestIdleLoopParks(t *testing.T) {
	srv := backend(t, func(c *net.TCPConn) { io.Copy(c, c) })
	svc := newService(t, srv)
	r := setup(t, 1, svc)
	for i := range 3 {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
			t.Fatalf("connection %d: %q, %v", i, b, err)
		}
		c.Close()
		closeWait(t, svc)
		waitParked(t)
	}
}

// waitParked waits until the only loop is parked in the runtime's poller.
func waitParked(t *testing.T) {
	t.Helper()
	loopState := func() string {
		buf := make([]byte, 1<<20)
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "tcploop.(*loop).run(") {
				return strings.SplitN(g, "\n", 2)[0]
			}
		}
		return "no loop goroutine"
	}
	var state string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); runtime.Gosched() {
		if state = loopState(); strings.Contains(state, "[IO wait") {
			return
		}
	}
	t.Fatalf("the idle loop is not parked in the runtime's poller after 5 s: %s", state)
}
