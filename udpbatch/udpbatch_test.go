package udpbatch

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
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
