package proxy

import (
	"net"
	"testing"
	"time"
)

// A server's max_connections and resume_connections (ipvsadm -x and -y):
// at the upper mark a new client goes to another server, a client with a
// template keeps its server (as in IPVS), and the server takes new clients
// again only below the lower mark.
func TestServerConnectionThresholds(t *testing.T) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	listen := freeAddr(t)
	p := startProxy(t, mustConfig(t, "services:\n  - name: web\n    listen: "+listen+"\n    scheduler: wrr\n    persistence: {timeout: 300s}\n    servers:\n"+
		"      - {address: "+a.addr.String()+", weight: 100, max_connections: 3, resume_connections: 2}\n"+
		"      - {address: "+b.addr.String()+", weight: 1}\n"), Options{})
	var held []net.Conn
	open := func(src string) string {
		t.Helper()
		c, name := hold(t, src, listen)
		held = append(held, c)
		return name
	}
	// active is a's open connections once the proxy has seen closes.
	waitActive := func(want int64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if got := p.Status()[0].Servers[0].ActiveConns; got == want {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("a has %d connections open, want %d", got, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for i, want := range []string{"a", "a", "a"} { // the scheduler, then the template
		if got := open("127.1.0.1"); got != want {
			t.Fatalf("connection %d of 127.1.0.1 went to %s, want %s", i, got, want)
		}
	}
	if got := p.Status()[0].Servers[0].State; got != "full" {
		t.Errorf("a at its max_connections shows %q, want full", got)
	}
	if got := open("127.1.0.2"); got != "b" {
		t.Errorf("a new client while a is full went to %s, want b", got)
	}
	if got := open("127.1.0.1"); got != "a" {
		t.Errorf("a client with a template on full a went to %s; IPVS keeps it on a", got)
	}
	held[0].Close() // a: 4 → 2, under its upper mark but at its lower one: still full
	held[1].Close()
	waitActive(2)
	if got := open("127.1.0.3"); got != "b" {
		t.Errorf("a new client with a at 2 (resume below 2) went to %s, want b", got)
	}
	held[2].Close() // a: 2 → 1: below the lower mark
	waitActive(1)
	if got := p.Status()[0].Servers[0].State; got != "up" {
		t.Errorf("a below its resume_connections shows %q, want up", got)
	}
	if got := open("127.1.0.4"); got != "a" {
		t.Errorf("a new client with a below its lower mark went to %s, want a", got)
	}
}
