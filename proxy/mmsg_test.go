package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
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

			w := newBatchWriter(udpBatch)
			rc, _ := b.SyscallConn()
			var out [][]byte
			for i := range 10 {
				out = append(out, []byte(strconv.Itoa(i)))
			}
			out[4] = nil // an empty datagram
			if err := w.write(rc, out); err != nil {
				t.Fatal(err)
			}
			r := newBatchReader(udpBatch, 64<<10)
			arc, _ := a.SyscallConn()
			// Loopback delivers on send: all ten are queued before the read.
			n, err := r.read(arc)
			if err != nil || n != 10 {
				t.Fatalf("read %d datagrams (%v), want all 10 queued ones in one call", n, err)
			}
			for i := range n {
				got, src, ok := r.msg(i)
				if !ok || string(got) != string(out[i]) || src != from {
					t.Errorf("datagram %d: %q from %s (ok %v), want %q from %s", i, got, src, ok, out[i], from)
				}
			}
		})
	}
}

// A burst from one client goes through the batched path to its server in
// order, and every datagram is answered.
func TestUDPBurstKeepsOrder(t *testing.T) {
	got := make(chan string, 200)
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			got <- string(buf[:n])
			pc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	listen := freeUDPAddr(t)
	startProxy(t, mustConfig(t, udpConfig(listen, "rr", "", netip.MustParseAddrPort(pc.LocalAddr().String()))), Options{})
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 8, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	vip := netip.MustParseAddrPort(listen)
	if _, _, err := askUDP(c, vip); err != nil { // the flow first
		t.Fatal(err)
	}
	next := func() string {
		select {
		case s := <-got:
			return s
		case <-time.After(5 * time.Second):
			t.Fatal("the server got nothing for 5s")
			return ""
		}
	}
	next()
	const burst = 100
	for i := range burst {
		c.WriteToUDPAddrPort([]byte(fmt.Sprint(i)), vip)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	for i := range burst {
		if s := next(); s != fmt.Sprint(i) {
			t.Fatalf("the server got datagram %q as number %d: out of order", s, i)
		}
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
	}
}
