package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/udpbatch"
)

// udpModes are the two ways a UDP service is served: on the event loops
// (the default), and a goroutine for the service and one for each flow's
// replies (--tcp-loops -1).
var udpModes = []struct {
	name  string
	loops int
}{{"loops", 0}, {"goroutines", -1}}

// On the event loops a UDP flow costs no goroutine: its socket is watched
// by the loop that reads its service's. With a goroutine per flow, 40
// clients made 40 goroutines.
func TestUDPFlowsOnTheLoopsCostNoGoroutine(t *testing.T) {
	b := udpBackend(t, "a")
	listen := freeUDPAddr(t)
	p := startProxy(t, mustConfig(t, udpConfig(listen, "rr", "    persistence: {}\n", b)), Options{})
	vip := netip.MustParseAddrPort(listen)
	if _, _, err := askUDP(udpClient(t, 127, 8, 0, 200), vip); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	const clients = 40
	for i := range clients {
		if _, _, err := askUDP(udpClient(t, 127, 8, 0, byte(i+1)), vip); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	if n := p.UDPFlows(vip); n != clients+1 {
		t.Fatalf("%d flows, want %d", n, clients+1)
	}
	if grew := runtime.NumGoroutine() - before; grew >= clients/4 {
		t.Errorf("%d flows more made %d goroutines more: a flow on the loops costs none", clients, grew)
	}
}

// Both ways keep each client on its server, end idle flows and release
// their templates, close a server's flows when its health check fails
// (the closes come from the checker, not the loop), and a reload that
// removes the service closes its flows and its socket.
func TestUDPServiceInBothModes(t *testing.T) {
	for mi, m := range udpModes {
		t.Run(m.name, func(t *testing.T) {
			dir := t.TempDir()
			a, b := udpBackend(t, "a"), udpBackend(t, "b")
			port := map[string]uint16{"a": a.Port(), "b": b.Port()}
			// Both addresses before the health checks run: a check's fork
			// holds the sockets of the process until its exec.
			listen, next := freeUDPAddr(t), freeUDPAddr(t)
			yaml := udpConfig(listen, "rr", flagCheck(dir, "")+"    persistence: {}\n    limits: {idle_timeout: 300ms}\n", a, b)
			p := startProxy(t, mustConfig(t, yaml), Options{TCPLoops: m.loops})
			waitState(t, p, "dns", a.String(), "up", time.Now())
			waitState(t, p, "dns", b.String(), "up", time.Now())
			vip := netip.MustParseAddrPort(listen)
			clients := make([]*net.UDPConn, 6)
			first := make([]string, len(clients))
			for i := range clients {
				clients[i] = udpClient(t, 127, 9, byte(10+mi), byte(i+1))
				var err error
				if first[i], _, err = askUDP(clients[i], vip); err != nil {
					t.Fatalf("client %d: %v", i, err)
				}
			}
			for round := range 3 {
				for i, c := range clients {
					got, from, err := askUDP(c, vip)
					if err != nil || got != first[i] || from != vip {
						t.Fatalf("round %d, client %d: %q from %v (%v), want %q from %v", round, i, got, from, err, first[i], vip)
					}
				}
			}
			if n := p.UDPFlows(vip); n != len(clients) {
				t.Fatalf("%d flows, want %d", n, len(clients))
			}
			waitOrFail(t, "idle flows to end", func() bool { return p.UDPFlows(vip) == 0 })
			for _, tp := range p.Table().List(affinity.Filter{}) {
				if tp.Active != 0 {
					t.Fatalf("a template still held after its flow ended: %+v", tp)
				}
			}

			// The first client's server goes down: its clients' flows
			// close, the others' stay.
			for i, c := range clients {
				if _, _, err := askUDP(c, vip); err != nil {
					t.Fatalf("client %d again: %v", i, err)
				}
			}
			gone := first[0]
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(port[gone])), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			waitState(t, p, "dns", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port[gone]).String(), "down", time.Now())
			stay := 0
			for _, f := range first {
				if f != gone {
					stay++
				}
			}
			waitOrFail(t, "the down server's flows to close", func() bool { return p.UDPFlows(vip) == stay })
			if got, _, err := askUDP(clients[0], vip); err != nil || got == gone {
				t.Fatalf("after %s went down its client got %q (%v)", gone, got, err)
			}

			// A reload without the service closes its flows and socket.
			if err := p.Reload(mustConfig(t, udpConfig(next, "rr", "", a))); err != nil {
				t.Fatal(err)
			}
			if n := p.UDPFlows(vip); n != 0 {
				t.Fatalf("%d flows of a removed service", n)
			}
			// Polled: a health check's fork holds the process's sockets
			// for a moment, until its exec closes them.
			waitOrFail(t, "the removed service's address to be free", func() bool {
				pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(vip))
				if err == nil {
					pc.Close()
				}
				return err == nil
			})
			if n := p.flowsTotal.Load(); n != 0 {
				t.Errorf("%d flows counted against udp_max_flows after the service went", n)
			}
		})
	}
}

// waitOrFail waits up to 5 s for cond (waitFor), and fails the test
// without it.
func waitOrFail(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !waitFor(5*time.Second, cond) {
		t.Fatalf("gave up waiting 5 s for %s", what)
	}
}

// A UDP service on two loops has a socket on each, and the kernel spreads
// clients over them; a flow closed by another goroutine (here a reload
// that lowers max_flows, as a server going down or another loop's flow cap
// would) is forgotten by its loop within a tick, so the loops watch only
// the sockets that are open.
func TestUDPSocketForEachLoop(t *testing.T) {
	b := udpBackend(t, "a")
	listen := freeUDPAddr(t)
	yaml := func(maxFlows int) string {
		return udpConfig(listen, "rr", fmt.Sprintf("    limits: {max_flows: %d}\n", maxFlows), b)
	}
	p := startProxy(t, mustConfig(t, yaml(100)), Options{TCPLoops: 2})
	vip := netip.MustParseAddrPort(listen)
	const clients = 40
	for i := range clients {
		if _, _, err := askUDP(udpClient(t, 127, 10, 0, byte(i+1)), vip); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	p.svcMu.RLock()
	svc := p.services[config.ServiceKey{VIP: vip, UDP: true}]
	p.svcMu.RUnlock()
	if len(svc.udp) != 2 {
		t.Fatalf("%d sockets for two loops", len(svc.udp))
	}
	socks := map[*udpbatch.Socket]int{}
	for _, f := range svc.flows.Drain() {
		socks[f.out]++
		svc.flows.Add(f.client, f)
	}
	if len(socks) != 2 {
		t.Errorf("%d clients' flows all on one loop's socket: %v", clients, socks)
	}
	if n := p.loops.Watches(); n != 2+clients {
		t.Fatalf("the loops watch %d descriptors, want 2 sockets and %d flows", n, clients)
	}
	if err := p.Reload(mustConfig(t, yaml(10))); err != nil {
		t.Fatal(err)
	}
	if n := p.UDPFlows(vip); n != 10 {
		t.Fatalf("%d flows after max_flows went to 10", n)
	}
	waitOrFail(t, "the loops to forget the closed flows' sockets", func() bool { return p.loops.Watches() == 2+10 })
}

// The status may be read while a reload stops a UDP service on the loops:
// the stop used to empty the service's socket list under the status's feet
// (the race detector caught it).
func TestUDPStatusDuringStop(t *testing.T) {
	b := udpBackend(t, "a")
	listen, next := freeUDPAddr(t), freeUDPAddr(t)
	p := startProxy(t, mustConfig(t, udpConfig(listen, "rr", "", b)), Options{TCPLoops: 2})
	if _, _, err := askUDP(udpClient(t, 127, 11, 0, 1), netip.MustParseAddrPort(listen)); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			p.Status()
			n++
		}
	}()
	if err := p.Reload(mustConfig(t, udpConfig(next, "rr", "", b))); err != nil {
		t.Fatal(err)
	}
	close(stop)
	if n := <-done; n == 0 {
		t.Fatal("the status was never read")
	}
}
