package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

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
