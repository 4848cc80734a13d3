package proxy

import (
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherlb/tether/accesslog"
)

// 200 client addresses, 4 in each of 50 /24s, with a /24 netmask: every
// client's connections reach one server, a /24 shares one, and the groups
// are spread as the scheduler says.
func TestStickinessByNetmask(t *testing.T) {
	for _, tc := range []struct {
		sched string
		check func(t *testing.T, spread []int)
	}{
		{"rr", func(t *testing.T, spread []int) {
			if fmt.Sprint(spread) != "[16 17 17]" {
				t.Errorf("rr spread of 50 groups over 3 servers = %v, want [16 17 17]", spread)
			}
		}},
		{"mh", func(t *testing.T, spread []int) {
			// Maglev gives each server a third of its table, so a server's
			// share of 50 groups is about Binomial(50, 1/3): mean 16.7,
			// deviation 3.3. The servers' ports are random, so the spread
			// is too; 3 or fewer is 4 deviations off (once in 10^5 runs),
			// where 7 happened in CI.
			if spread[0] <= 3 {
				t.Errorf("mh spread of 50 groups = %v: a server got almost none", spread)
			}
		}},
	} {
		t.Run(tc.sched, func(t *testing.T) {
			b := []*backend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
			listen := freeAddr(t)
			cfg := mustConfig(t, "services:\n"+serviceYAML("web", listen, tc.sched, "    persistence: {netmask: 255.255.255.0}\n", b...))
			startProxy(t, cfg, Options{})

			byClient := map[netip.Addr]map[string]bool{}
			byGroup := map[netip.Prefix]map[string]bool{}
			for round := range 3 {
				for i := range 200 {
					src := srcAddr(i)
					name, err := who(src, listen)
					if err != nil {
						t.Fatalf("round %d client %s: %v", round, src, err)
					}
					if byClient[src] == nil {
						byClient[src] = map[string]bool{}
					}
					if byGroup[group(src)] == nil {
						byGroup[group(src)] = map[string]bool{}
					}
					byClient[src][name] = true
					byGroup[group(src)][name] = true
				}
			}
			for c, s := range byClient {
				if len(s) != 1 {
					t.Errorf("client %s reached %d servers: %v", c, len(s), s)
				}
			}
			per := map[string]int{}
			for g, s := range byGroup {
				if len(s) != 1 {
					t.Errorf("group %s reached %d servers: %v", g, len(s), s)
				}
				for n := range s {
					per[n]++
				}
			}
			spread := []int{per["a"], per["b"], per["c"]}
			sort.Ints(spread)
			tc.check(t, spread)
		})
	}
}

// 100 MB each way through the proxy: what the client sent, the backend
// echoed and the client got back have the same md5.
func TestBulkTransferIntegrity(t *testing.T) {
	const size = 100 << 20
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	backendSum := make(chan [16]byte, 1)
	go func() {
		c, err := echo.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		h := md5.New()
		io.Copy(c, io.TeeReader(c, h))
		c.(*net.TCPConn).CloseWrite()
		backendSum <- [16]byte(h.Sum(nil))
	}()
	listen := freeAddr(t)
	cfg := mustConfig(t, fmt.Sprintf("services:\n  - name: bulk\n    listen: %s\n    servers: [{address: %s}]\n", listen, echo.Addr()))
	startProxy(t, cfg, Options{})

	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sent, got := md5.New(), md5.New()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		src := io.LimitReader(rand.NewChaCha8([32]byte{1}), size)
		io.Copy(c, io.TeeReader(src, sent))
		c.(*net.TCPConn).CloseWrite() // half-close: the reply must still arrive whole
	}()
	n, err := io.Copy(got, c)
	wg.Wait()
	if err != nil || n != size {
		t.Fatalf("received %d bytes, err %v; want %d", n, err, size)
	}
	s, g := [16]byte(sent.Sum(nil)), [16]byte(got.Sum(nil))
	select {
	case b := <-backendSum:
		if b != s {
			t.Errorf("backend md5 %x, client sent %x", b, s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("backend never finished")
	}
	if s != g {
		t.Errorf("client sent md5 %x, received %x", s, g)
	}
}

// A client that half-closes after its request still gets the whole reply,
// which the backend sends only after it saw the request's end.
func TestHalfCloseReplyArrives(t *testing.T) {
	const reply = 8 << 20
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		c, err := srv.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := io.Copy(io.Discard, c); err != nil { // until the client's FIN
			return
		}
		io.Copy(c, io.LimitReader(rand.NewChaCha8([32]byte{2}), reply))
	}()
	listen := freeAddr(t)
	startProxy(t, mustConfig(t, fmt.Sprintf("services:\n  - name: hc\n    listen: %s\n    servers: [{address: %s}]\n", listen, srv.Addr())), Options{})
	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET everything\n")
	c.(*net.TCPConn).CloseWrite()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != reply {
		t.Fatalf("got %d bytes (err %v) after half-close, want %d", n, err, reply)
	}
}

// A server killed mid-test: no new connection fails, its clients are
// rebound to the others and then stay there.
func TestServerKilledNoClientFails(t *testing.T) {
	b := []*backend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	listen := freeAddr(t)
	cfg := mustConfig(t, "services:\n"+serviceYAML("web", listen, "rr", "    persistence: {}\n", b...))
	p := startProxy(t, cfg, Options{})
	first := map[netip.Addr]string{}
	for i := range 60 {
		name, err := who(srcAddr(i), listen)
		if err != nil {
			t.Fatal(err)
		}
		first[srcAddr(i)] = name
	}
	b[1].kill()
	moved := map[netip.Addr]string{}
	for round := range 3 {
		for i := range 60 {
			src := srcAddr(i)
			name, err := who(src, listen)
			if err != nil {
				t.Fatalf("round %d: client %s failed after server b died: %v", round, src, err)
			}
			switch {
			case name == "b":
				t.Fatalf("client %s reached the dead server", src)
			case first[src] != "b" && name != first[src]:
				t.Errorf("client %s of a live server moved from %s to %s", src, first[src], name)
			case first[src] == "b" && round == 0:
				moved[src] = name
			case first[src] == "b" && moved[src] != name:
				t.Errorf("rebound client %s moved again, %s then %s", src, moved[src], name)
			}
		}
	}
	if len(moved) != 20 {
		t.Errorf("%d clients of b were rebound, want 20", len(moved))
	}
	for _, tp := range p.Table().List(affinityFilterAll) {
		if tp.Server == b[1].addr {
			t.Errorf("template %v still bound to the dead server", tp.Client)
		}
	}
}

// A service refuses connections over its cap, says so in the log (at most
// once a second; a reset alone would leave the operator only a counter),
// and reuses a freed slot. The cap is max_connections, or, when the config
// leaves it out, derived from the descriptor limit: 72 descriptors keep
// 64 in reserve and give TCP half of the other 8, two connections.
// Both data paths: the event loops and goroutines.
func TestMaxConnections(t *testing.T) {
	for _, c := range []struct {
		name, limits, from string
		descriptors        int
	}{
		{"explicit", "    limits: {max_connections: 2}\n", "from=max_connections", 0},
		{"derived", "", `from="the descriptor limit`, 72},
	} {
		for _, loops := range []int{0, -1} {
			t.Run(fmt.Sprintf("%s/loops=%d", c.name, loops), func(t *testing.T) {
				b := startBackend(t, "a")
				listen := freeAddr(t)
				cfg := mustConfig(t, "services:\n"+serviceYAML("lim", listen, "rr", c.limits, b))
				var logs syncBuffer
				startProxy(t, cfg, Options{TCPLoops: loops, Descriptors: c.descriptors, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
				maxConnections(t, listen)
				want := "a service at its connection cap refuses new connections"
				if got := logs.String(); !strings.Contains(got, want) || !strings.Contains(got, "cap=2") || !strings.Contains(got, c.from) {
					t.Fatalf("no warning with cap=2 and %s in the log:\n%s", c.from, got)
				}
			})
		}
	}
}

// A flood at the cap costs each refused connection no allocation once the
// second's line is written: the line's arguments are built only for the
// lines written (they were boxed at every refusal: two or three
// allocations).
func TestRefusalAtTheCapAllocatesNothing(t *testing.T) {
	b := startBackend(t, "a")
	listen := freeAddr(t)
	p := startProxy(t, mustConfig(t, "services:\n"+serviceYAML("web", listen, "rr", "", b)), Options{})
	var st *serviceState
	for _, s := range p.services {
		st = s.state.Load()
	}
	src := netip.MustParseAddrPort("127.0.0.1:1234")
	var lg accesslog.Counts
	p.atCap(st, src, &lg) // the line of this second
	if n := testing.AllocsPerRun(1000, func() { p.atCap(st, src, &lg) }); n != 0 {
		t.Errorf("a refusal at the cap allocates %v times, want 0", n)
	}
	if got := st.ev.n[evRejected].Load(); got != 1002 {
		t.Errorf("%d refusals counted, want 1002", got)
	}
}

// maxConnections checks that the service at listen serves two connections,
// refuses a third, and serves again once one of the two is closed.
func maxConnections(t *testing.T, listen string) {
	t.Helper()
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", listen)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 2)); err != nil {
			t.Fatalf("within the limit: %v", err)
		}
		held = append(held, c)
	}
	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 2)); err == nil {
		t.Fatalf("third connection over max_connections 2 was served (%d bytes)", n)
	}
	held[0].Close()
	// The slot frees when the proxy sees the close; poll within a bound.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := who(netip.MustParseAddr("127.0.0.1"), listen); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a freed slot was never reused")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestIdleTimeout(t *testing.T) {
	b := startBackend(t, "a")
	listen := freeAddr(t)
	cfg := mustConfig(t, "services:\n"+serviceYAML("idle", listen, "rr", "    limits: {idle_timeout: 300ms}\n", b))
	startProxy(t, cfg, Options{})

	idle, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	busy, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	// The busy connection talks every 50 ms for 1.5 s (5 idle timeouts).
	buf := make([]byte, 64)
	busy.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := busy.Read(buf); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if _, err := busy.Write([]byte("x")); err != nil {
			t.Fatalf("busy connection write %d: %v", i, err)
		}
		if _, err := io.ReadFull(busy, buf[:1]); err != nil {
			t.Fatalf("busy connection closed after %d round trips: %v", i, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// By now the idle one, silent for 1.5 s, must have been closed.
	idle.SetDeadline(time.Now().Add(5 * time.Second))
	io.ReadFull(idle, buf[:2]) // the greeting
	if _, err := idle.Read(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: read = %v, want EOF from the idle timeout", err)
	}
}

// A server that refuses connections costs no client a failure: the next
// server is tried within the same client connection.
func TestRefusingServerIsRetried(t *testing.T) {
	good := startBackend(t, "good")
	dead := startBackend(t, "dead")
	dead.kill()
	listen := freeAddr(t)
	cfg := mustConfig(t, "services:\n"+serviceYAML("web", listen, "rr", "    persistence: {}\n", dead, good))
	startProxy(t, cfg, Options{})
	var failures atomic.Int32
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if name, err := who(srcAddr(i), listen); err != nil || name != "good" {
				failures.Add(1)
			}
		}()
	}
	wg.Wait()
	if failures.Load() != 0 {
		t.Fatalf("%d of 40 clients failed while one server was up", failures.Load())
	}
}

func TestShutdownDrainsThenCloses(t *testing.T) {
	b := startBackend(t, "a")
	listen := freeAddr(t)
	cfg := mustConfig(t, "services:\n"+serviceYAML("web", listen, "rr", "", b))
	p := New(cfg, Options{})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.ReadFull(c, make([]byte, 2))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", listen, time.Second); err == nil {
		t.Error("still accepting after Shutdown")
	}
	// The held connection was closed at the drain deadline.
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection still open after the drain deadline")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Shutdown took %v with a 200ms drain deadline", d)
	}
}

// The idle timeout ends a half-closed connection too: a client that shut
// down its sending side, to a server that holds the connection open and
// says nothing, used to keep it (and its descriptors) forever.
func TestIdleTimeoutEndsHalfClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(io.Discard, c) // reads to the client's FIN, then holds on
		held <- c
	}()
	defer func() {
		select {
		case c := <-held:
			c.Close()
		default:
		}
	}()
	listen := freeAddr(t)
	startProxy(t, mustConfig(t, fmt.Sprintf("services:\n  - {name: half, listen: %s, limits: {idle_timeout: 200ms}, servers: [{address: %s}]}\n", listen, ln.Addr())), Options{})
	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("half-closed connection, server silent: read = %v, want EOF from the 200ms idle timeout", err)
	}
}
