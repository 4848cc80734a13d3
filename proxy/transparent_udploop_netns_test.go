package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/tetherlb/tether/testenv"
)

// TPROXYed UDP, on the event loops and with goroutines: each client keeps
// its server, replies come from the VIP:port it sent to, and flows end
// after their idle timeout. On the loops the listener and both sockets of
// each flow are watched there, and a flow that ended is forgotten.
func TestTransparentUDPInBothModes(t *testing.T) {
	for _, m := range udpModes {
		t.Run(m.name, func(t *testing.T) { transparentUDP(t, m.loops) })
	}
}

func transparentUDP(t *testing.T, loops int) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 16, Backends: 2, Label: fmt.Sprintf("tu%d", loops+1)})
	for _, b := range env.Backends {
		if _, err := b.ServeUDP(53); err != nil {
			t.Fatal(err)
		}
	}
	cfg := fmt.Sprintf("marks:\n  - name: dns\n    mark: 0x53\n    protocol: udp\n    addresses: [%s]\n    ports: [53]\nservices:\n  - name: dns\n    fwmark: 0x53\n    scheduler: rr\n    persistence: {timeout: 60s}\n    limits: {idle_timeout: 300ms}\n    servers:\n      - address: %s\n      - address: %s\n",
		testenv.VIP, testenv.BackendAddr(0), testenv.BackendAddr(1))
	p, _ := startInLB(t, env, cfg, Options{TCPLoops: loops})
	vip := netip.AddrPortFrom(testenv.VIP, 53)
	client := env.Clients[0]
	ask := func(src netip.Addr) string {
		t.Helper()
		name, err := client.AskUDP(context.Background(), src, vip)
		if err != nil {
			t.Fatal(err)
		}
		return name
	}
	first := map[netip.Addr]string{}
	for _, src := range client.Addrs {
		first[src] = ask(src)
	}
	for _, src := range client.Addrs {
		if got := ask(src); got != first[src] {
			t.Errorf("%s: %s then %s", src, first[src], got)
		}
	}
	flows := func() int { return p.tp.uflows.Len() }
	if n := flows(); n != 2*len(client.Addrs) {
		t.Fatalf("%d flows, want one a client socket: %d", n, 2*len(client.Addrs))
	}
	onLoops := len(p.tp.uloops)
	if loops >= 0 {
		if onLoops == 0 {
			t.Fatal("the transparent UDP listener is not on the event loops")
		}
		if n := p.loops.Watches(); n != onLoops+2*flows() {
			t.Fatalf("the loops watch %d descriptors, want %d listeners and two sockets for each of %d flows", n, onLoops, flows())
		}
		// A listener for each loop, and the kernel's TPROXY lookup
		// spreads the clients' flows over them.
		if onLoops != p.loops.Len() {
			t.Errorf("%d transparent UDP listeners for %d loops", onLoops, p.loops.Len())
		}
		for i := range p.loops.Len() {
			if n := p.loops.WatchesOn(i); n < 3 {
				t.Errorf("loop %d watches %d descriptors: no flow of %d on it", i, n, flows())
			}
		}
	} else if onLoops != 0 {
		t.Fatal("the loops read UDP with --tcp-loops -1")
	}
	waitOrFail(t, "idle transparent flows to end", func() bool { return flows() == 0 })
	if loops >= 0 {
		waitOrFail(t, "the loops to forget the ended flows' sockets", func() bool { return p.loops.Watches() == onLoops })
	}
}
