package udpbatch

import (
	"net"
	"net/netip"
	"strconv"
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
