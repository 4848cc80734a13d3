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

// persistence.max_client_connections: a client group with that many
// connections open gets a reset for one more (counted, not a failure: no
// server is blamed), another group is served, and a closed connection
// makes room on the group's server again.
func TestMaxClientConnections(t *testing.T) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	listen := freeAddr(t)
	p := startProxy(t, mustConfig(t, "services:\n"+serviceYAML("web", listen, "rr",
		"    persistence: {netmask: 255.255.255.0, max_client_connections: 2}\n", a, b)), Options{})
	first, server := hold(t, "127.1.0.1", listen)
	hold(t, "127.1.0.2", listen)
	if name, err := who(netip.MustParseAddr("127.1.0.3"), listen); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("third connection of 127.1.0.0/24: %q, %v; want a reset", name, err)
	}
	if name, err := who(netip.MustParseAddr("127.1.1.1"), listen); err != nil {
		t.Errorf("another group: %q, %v; want served", name, err)
	}
	if s := p.table.Stats(); s.ClientLimited != 1 {
		t.Errorf("ClientLimited = %d, want 1", s.ClientLimited)
	}
	for _, s := range p.Status()[0].Servers {
		if s.ConnectFails != 0 || s.State != "up" {
			t.Errorf("server %s: %s, %d connect failures; a client's limit blames no server", s.Address, s.State, s.ConnectFails)
		}
	}
	first.Close()
	// The proxy releases the lease when it sees the close: poll for it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		name, err := who(netip.MustParseAddr("127.1.0.3"), listen)
		if err == nil {
			if name != server {
				t.Errorf("after a close: served by %q, want the group's server %q", name, server)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still refused 5s after a close: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The same limit counts UDP flows: a client with its one flow open gets
// nothing for a second flow (another source port), another client is served.
func TestMaxClientConnectionsUDP(t *testing.T) {
	u := udpBackend(t, "u")
	listen := freeUDPAddr(t)
	p := startProxy(t, mustConfig(t, "services:\n  - name: dns\n    protocol: udp\n    listen: \""+listen+"\"\n"+
		"    persistence: {max_client_connections: 1}\n    servers: [{address: \""+u.String()+"\"}]\n"), Options{})
	ask := func(src string) error {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() }) // the flow stays open until the test ends
		c.WriteToUDPAddrPort([]byte("who?"), netip.MustParseAddrPort(listen))
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond)) // a reply comes in microseconds
		_, err = c.Read(make([]byte, 64))
		return err
	}
	if err := ask("127.1.0.1"); err != nil {
		t.Fatalf("first flow: %v", err)
	}
	if err := ask("127.1.0.1"); err == nil {
		t.Errorf("a second flow of 127.1.0.1 was served; want nothing past max_client_connections 1")
	}
	if err := ask("127.1.0.2"); err != nil {
		t.Errorf("another client: %v", err)
	}
	if s := p.table.Stats(); s.ClientLimited != 1 {
		t.Errorf("ClientLimited = %d, want 1", s.ClientLimited)
	}
}
