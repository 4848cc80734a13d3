package proxy

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// A service's access lists: a TCP client in deny, or outside a non-empty
// allow, gets a reset; a UDP one gets nothing; the others are served.
func TestAccessLists(t *testing.T) {
	b := startBackend(t, "a")
	u := udpBackend(t, "u")
	listen, ulisten := freeAddr(t), freeUDPAddr(t)
	acl := "    allow: [127.1.0.0/16]\n    deny: [127.1.9.9]\n"
	startProxy(t, mustConfig(t, "services:\n"+serviceYAML("web", listen, "rr", acl, b)+
		"  - name: dns\n    protocol: udp\n    listen: \""+ulisten+"\"\n"+acl+"    servers: [{address: \""+u.String()+"\"}]\n"), Options{})
	for _, tc := range []struct {
		src    string
		served bool
	}{{"127.1.0.1", true}, {"127.1.9.9", false}, {"127.2.0.1", false}} {
		src := netip.MustParseAddr(tc.src)
		name, err := who(src, listen)
		switch {
		case tc.served && (err != nil || name != "a"):
			t.Errorf("tcp from %s: %q, %v; want served", src, name, err)
		case !tc.served && !errors.Is(err, syscall.ECONNRESET):
			t.Errorf("tcp from %s: %q, %v; want a reset", src, name, err)
		}
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: src.AsSlice()})
		if err != nil {
			t.Fatal(err)
		}
		c.WriteToUDPAddrPort([]byte("who?"), netip.MustParseAddrPort(ulisten))
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond)) // a reply comes in microseconds
		_, err = c.Read(make([]byte, 64))
		c.Close()
		if tc.served != (err == nil) {
			t.Errorf("udp from %s: %v; served want %v", src, err, tc.served)
		}
	}
}
