package tcploop

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tetherlb/tether/tcprelay"
)

// Connections that all arrive at one loop's listener (as the kernel's
// reuseport hash can send a handful of long connections) are spread: the
// loop hands them to the other one until they are within slack, and
// every handed connection carries its bytes both ways.
func TestUnevenArrivalsAreSpread(t *testing.T) {
	srv := backend(t, func(c *net.TCPConn) { io.Copy(c, c) }) // echo until the client closes
	s := newService(t, srv)
	relay := tcprelay.New(func() int { return 16 })
	ls, err := New(2, relay)
	if err != nil {
		t.Fatal(err)
	}
	var lns []*net.TCPListener
	for range 2 {
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
	}
	stop, err := ls.Listen(lns, s) // one listener a loop
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stop()
		for _, ln := range lns {
			ln.Close()
		}
		ls.Close()
		relay.Close()
	})

	const n = 40
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i := range n {
		c, err := net.Dial("tcp", lns[0].Addr().String()) // all to loop 0's listener
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		msg := fmt.Sprintf("client %d\n", i)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Fatalf("client %d: echo %q, %v", i, got, err)
		}
	}
	a, b := ls.loops[0].open.Load(), ls.loops[1].open.Load()
	if a+b != n {
		t.Fatalf("loops hold %d + %d connections, want %d", a, b, n)
	}
	if a-b > slack(a) || b == 0 {
		t.Errorf("loops hold %d and %d connections: all arrived at the first, want them spread within %d", a, b, slack(a))
	}
}
