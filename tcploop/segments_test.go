package tcploop

import (
	"io"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// segmentsIn dials addr, reads to the EOF and returns how many segments
// the client's socket received (TCP_INFO), the SYN-ACK included.
func segmentsIn(t *testing.T, addr string) uint32 {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "reply" {
		t.Fatalf("read %q, %v; want the backend's reply", b, err)
	}
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	rc.Control(func(fd uintptr) { info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if err != nil {
		t.Fatal(err)
	}
	return info.Segs_in
}

// A server that replies and closes at once sends its reply and FIN in one
// segment; the loop passes them on in one segment too (MSG_MORE, then the
// shutdown), not as a data segment and a FIN: the client receives no more
// segments through the loop than from the server directly.
func TestFinRidesWithTheLastData(t *testing.T) {
	srv := backend(t, func(c *net.TCPConn) {
		rc, err := c.SyscallConn()
		if err != nil {
			return
		}
		// Held back (MSG_MORE) until the close: reply and FIN together.
		rc.Write(func(fd uintptr) bool {
			unix.Sendto(int(fd), []byte("reply"), unix.MSG_MORE, nil)
			return true
		})
	})
	direct := segmentsIn(t, srv.String())
	svc := newService(t, srv)
	r := setup(t, 1, svc)
	// The loop sees the FIN with the data unless its wait ran in the
	// microseconds between the kernel queueing the one and the other;
	// tolerate one such miss in ten.
	const tries = 10
	merged := 0
	for range tries {
		if got := segmentsIn(t, r.addr); got <= direct {
			merged++
		}
		closeWait(t, svc)
	}
	if merged < tries-1 {
		t.Fatalf("%d of %d connections through the loop received no more segments than the %d of a direct one", merged, tries, direct)
	}
}
