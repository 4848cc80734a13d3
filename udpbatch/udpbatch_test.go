package udpbatch

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Datagrams queued on a socket come out of one recvmmsg, in order, with
// their sources (IPv4 and IPv6); sendmmsg sends a batch in order,
// an empty datagram included.
func TestBatchReadAndWrite(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) {
			lo := "127.0.0.1"
			if network == "udp6" {
				lo = "::1"
			}
			a, err := net.ListenUDP(network, &net.UDPAddr{IP: net.ParseIP(lo)})
			if err != nil {
				t.Skipf("no %s loopback: %v", network, err)
			}
			defer a.Close()
			b, err := net.DialUDP(network, nil, a.LocalAddr().(*net.UDPAddr))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			from := netip.MustParseAddrPort(b.LocalAddr().String())
			from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())

			w := NewWriter(16)
			rc, _ := b.SyscallConn()
			var out [][]byte
			for i := range 10 {
				out = append(out, []byte(strconv.Itoa(i)))
			}
			out[4] = nil // an empty datagram
			if err := w.Write(rc, out); err != nil {
				t.Fatal(err)
			}
			r := NewReader(16, 64<<10)
			arc, _ := a.SyscallConn()
			// Loopback delivers on send: all ten are queued before the read.
			n, err := r.Read(arc)
			if err != nil || n != 10 {
				t.Fatalf("read %d datagrams (%v), want all 10 queued ones in one call", n, err)
			}
			for i := range n {
				got, src, ok := r.Msg(i)
				if !ok || string(got) != string(out[i]) || src != from {
					t.Errorf("datagram %d: %q from %s (ok %v), want %q from %s", i, got, src, ok, out[i], from)
				}
			}
		})
	}
}

// On a Socket nothing waits: a read of an empty socket and a relay's
// next batch report EAGAIN at once; what Dial's socket sends reaches the
// server, and the server's answer comes back through the relay.
func TestSocketCallsDoNotWait(t *testing.T) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	s, err := Dial(srv.LocalAddr().(*net.UDPAddr).AddrPort())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := NewReader(4, 2048)
	if n, err := r.Read(s); n != 0 || err != unix.EAGAIN {
		t.Fatalf("an empty socket read %d (%v), want EAGAIN at once", n, err)
	}
	rel := NewRelay(NewPool(4))
	if bufs, _, _, err := rel.Next(s); bufs != nil || err != unix.EAGAIN {
		t.Fatalf("an empty socket's relay got %q (%v), want EAGAIN at once", bufs, err)
	}
	if err := NewWriter(4).Write(s, [][]byte{[]byte("one"), []byte("two")}); err != nil {
		t.Fatal(err)
	}
	srcRC, _ := srv.SyscallConn()
	n, err := r.Read(srcRC)
	if err != nil || n != 2 {
		t.Fatalf("the server read %d (%v), want both datagrams", n, err)
	}
	_, from, _ := r.Msg(0)
	var sa unix.RawSockaddrInet6
	l := Sockaddr(from, unix.AF_INET, &sa)
	if err := NewWriter(1).WriteTo(srcRC, [][]byte{[]byte("back")}, &sa, l); err != nil {
		t.Fatal(err)
	}
	bufs, total, _, err := rel.Next(s)
	if err != nil || len(bufs) != 1 || string(bufs[0]) != "back" || total != 4 {
		t.Fatalf("the reply: %q, %d bytes (%v), want \"back\"", bufs, total, err)
	}
	rel.Done()
	s.Close()
	if _, err := r.Read(s); err != net.ErrClosed {
		t.Fatalf("a read of a closed Socket: %v, want net.ErrClosed", err)
	}
}

// A Writer on a Socket whose destination has no room sends what fits,
// reports EAGAIN at once instead of waiting, and counts the rest as
// unsent (the proxy drops and counts them); once there is room again the
// rest go, in order. A Unix datagram pair with the least send buffer
// stands in for the full socket: what its receiver has not read counts
// against the sender's buffer.
func TestWriterOnAFullSocket(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	s := NewSocket(fds[0])
	defer s.Close()
	defer unix.Close(fds[1])
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 1); err != nil { // the kernel's least: a few KB
		t.Fatal(err)
	}
	const n = 64
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, 1000)
		copy(bufs[i], strconv.Itoa(i)+"\n")
	}
	w := NewWriter(n)
	if err := w.Write(s, bufs); err != unix.EAGAIN {
		t.Fatalf("%d datagrams to a receiver that reads none: %v, want EAGAIN", n, err)
	}
	sent := n - w.Unsent()
	if sent <= 0 || sent >= n {
		t.Fatalf("%d of %d sent before EAGAIN, want some and not all", sent, n)
	}
	next := 0
	drain := func() {
		b := make([]byte, 2000)
		for {
			m, err := unix.Read(fds[1], b)
			if err == unix.EAGAIN {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, _, _ := strings.Cut(string(b[:m]), "\n"); m != 1000 || got != strconv.Itoa(next) {
				t.Fatalf("datagram %d read as %d bytes starting %q", next, m, got)
			}
			next++
		}
	}
	drain()
	if next != sent {
		t.Fatalf("the receiver got %d datagrams, the writer said %d went", next, sent)
	}
	for rest := bufs[sent:]; len(rest) > 0; drain() {
		err := w.Write(s, rest)
		if err != nil && err != unix.EAGAIN {
			t.Fatal(err)
		}
		if w.Unsent() == len(rest) {
			t.Fatalf("nothing of %d sent to a drained receiver (%v)", len(rest), err)
		}
		rest = rest[len(rest)-w.Unsent():]
	}
	if next != n {
		t.Fatalf("the receiver got %d datagrams in all, want %d", next, n)
	}
}
