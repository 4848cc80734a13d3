package proxy

import (
	"bufio"
	"crypto/rand"
	"fmt"

	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/testserver"
	"github.com/tetherlb/tether/tcprelay"
)

// plainEcho is a backend that greets with "a\n" and echoes through a
// buffer: unlike io.Copy between sockets it holds no pipe of the Go
// runtime's, so that the descriptors counted are tether's.
func plainEcho(t *testing.T) string {
	return testserver.TCP(t, func(c net.Conn) {
		c.Write([]byte("a\n"))
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, err := c.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}).String()
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// A proxied connection holds its two sockets and, only while a direction
// carries bulk, one splice pipe: an idle connection used to hold two pipes
// besides (six descriptors), and the pipes of a burst stayed pooled after
// it ended.
func TestDescriptorsPerConnection(t *testing.T) {
	b := plainEcho(t)
	listen := freeAddr(t)
	p := startProxy(t, mustConfig(t, fmt.Sprintf("services:\n  - {name: fd, listen: %s, servers: [{address: %s}]}\n", listen, b)), Options{})
	active := func() int64 { return p.Status()[0].Servers[0].ActiveConns }
	settle := func(want int64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); active() != want; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d connections open, want %d", active(), want)
			}
		}
	}
	base := openFDs(t)
	const n = 100
	var conns []net.Conn
	for range n {
		c, err := net.Dial("tcp", listen)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil { // the greeting: the path is up
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	settle(n)
	// Per connection, in this process: the client's socket, tether's two,
	// the backend's.
	if used := openFDs(t) - base; used > n*4+8 {
		t.Errorf("%d idle connections hold %d descriptors, want at most %d (4 each)", n, used, n*4)
	}
	for _, c := range conns {
		c.Close()
	}
	settle(0)

	// A burst of bulk transfers, both ways at once on each connection.
	var wg sync.WaitGroup
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", listen)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			go io.Copy(c, io.LimitReader(rand.Reader, 1<<20))
			io.ReadFull(c, make([]byte, 2+1<<20)) // the greeting and the echo
		}()
	}
	wg.Wait()
	settle(0)
	if left := openFDs(t) - base; left > 2*tcprelay.PipesIdle+8 {
		t.Errorf("%d descriptors left after the burst, want at most %d (the pool's idle pipes)", left, 2*tcprelay.PipesIdle)
	}
	t.Logf("pipes open after the burst: %d", p.tcp.Pipes())

}
