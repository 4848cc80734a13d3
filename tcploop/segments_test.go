package tcploop

import (
	"io"
	"net"
	"testing"
	"time"

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

// tcpInfo is fd's TCP_INFO.
func tcpInfo(t *testing.T, fd int) *unix.TCPInfo {
	t.Helper()
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Error(err)
		return &unix.TCPInfo{}
	}
	return info
}

// The handshake's last ACK rides with the client's first bytes: the
// server's accept returns with the request already there, after two
// segments (the SYN; the ACK with the data), not three, and the server
// is woken once instead of for the connection and then for the data.
func TestHandshakeAckRidesWithTheFirstBytes(t *testing.T) {
	type seen struct {
		segs   uint32
		queued int
	}
	atAccept := make(chan seen, 1)
	srv := backend(t, func(c *net.TCPConn) {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Error(err)
			return
		}
		rc.Control(func(fd uintptr) {
			q, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
			if err != nil {
				t.Error(err)
			}
			atAccept <- seen{tcpInfo(t, int(fd)).Segs_in, q}
		})
		io.Copy(io.Discard, c)
	})
	svc := newService(t, srv)
	svc.waitData = true // the client's bytes are there when the loop dials
	r := setup(t, 1, svc)
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first := []byte("GET / HTTP/1.1\r\n\r\n")
	c.Write(first)
	select {
	case s := <-atAccept:
		if s.segs != 2 || s.queued != len(first) {
			t.Fatalf("at accept the server had %d segments and %d bytes, want 2 (SYN; ACK with the data) and %d", s.segs, s.queued, len(first))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server never accepted")
	}
}

// With nothing from the client to send, the ACK Dial held back goes at
// once: a server that speaks first (SMTP, FTP) does not wait for the
// delayed-ACK timer to see its connection. When the loop learns that its
// connect is done, its socket has sent the SYN and the ACK.
func TestHandshakeAckWithoutFirstBytes(t *testing.T) {
	srv := backend(t, func(c *net.TCPConn) {
		c.Write([]byte("220 ready\r\n"))
		io.Copy(io.Discard, c)
	})
	svc := newService(t, srv)
	sent := make(chan uint32, 1)
	svc.onConnected = func(c *Conn) { sent <- tcpInfo(t, c.sfd).Segs_out }
	r := setup(t, 1, svc)
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case n := <-sent:
		if n < 2 {
			t.Fatalf("the loop's socket had sent %d segment(s) when its connect was done: the handshake's ACK is held back", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connect was never reported done")
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(io.LimitReader(c, 11)); err != nil || string(b) != "220 ready\r\n" {
		t.Fatalf("read %q, %v; want the server's greeting", b, err)
	}
}
