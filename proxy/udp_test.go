package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherlb/tether/affinity"
)

// udpBackend answers every datagram with its name.
func udpBackend(t *testing.T, name string) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			pc.WriteToUDPAddrPort([]byte(name), from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// oneServerUDP starts a round-robin UDP service with one server (which
// answers "a") and the extra service lines given.
func oneServerUDP(t *testing.T, extra string) (*Proxy, netip.AddrPort) {
	t.Helper()
	b := udpBackend(t, "a")
	listen := freeUDPAddr(t)
	p := startProxy(t, mustConfig(t, udpConfig(listen, "rr", extra, b)), Options{})
	return p, netip.MustParseAddrPort(listen)
}

// udpClient is a UDP socket at a loopback address, closed with the test.
func udpClient(t *testing.T, a, b, c, d byte) *net.UDPConn {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(a, b, c, d)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func freeUDPAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().String()
}

func udpConfig(listen, scheduler, extra string, servers ...netip.AddrPort) string {
	var b strings.Builder
	fmt.Fprintf(&b, "services:\n  - name: dns\n    protocol: udp\n    listen: %s\n    scheduler: %s\n%s    servers:\n", listen, scheduler, extra)
	for _, s := range servers {
		fmt.Fprintf(&b, "      - address: %s\n", s)
	}
	return b.String()
}

// askUDP sends one datagram from c and returns the answer and where it
// came from.
func askUDP(c *net.UDPConn, to netip.AddrPort) (string, netip.AddrPort, error) {
	if _, err := c.WriteToUDPAddrPort([]byte("who?"), to); err != nil {
		return "", netip.AddrPort{}, err
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	return string(buf[:n]), from, err
}

// 200 client addresses, each from 3 source ports: one server per client
// and per /24, and every reply comes from the VIP:port the client used.
func TestUDPStickinessAndReplySource(t *testing.T) {
	b := []netip.AddrPort{udpBackend(t, "a"), udpBackend(t, "b"), udpBackend(t, "c")}
	listen := freeUDPAddr(t)
	startProxy(t, mustConfig(t, udpConfig(listen, "rr", "    persistence: {netmask: 255.255.255.0}\n", b...)), Options{})
	vip := netip.MustParseAddrPort(listen)
	byClient := map[netip.Addr]map[string]bool{}
	byGroup := map[netip.Prefix]map[string]bool{}
	for i := range 200 {
		src := srcAddr(i)
		for range 3 {
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
			if err != nil {
				t.Fatal(err)
			}
			name, from, err := askUDP(c, vip)
			c.Close()
			if err != nil {
				t.Fatalf("client %s: %v", src, err)
			}
			if from != vip {
				t.Fatalf("reply to %s came from %s, not the VIP %s", src, from, vip)
			}
			if byClient[src] == nil {
				byClient[src] = map[string]bool{}
			}
			if byGroup[group(src)] == nil {
				byGroup[group(src)] = map[string]bool{}
			}
			byClient[src][name], byGroup[group(src)][name] = true, true
		}
	}
	for c, s := range byClient {
		if len(s) != 1 {
			t.Errorf("client %s reached %v", c, s)
		}
	}
	per := map[string]int{}
	for g, s := range byGroup {
		if len(s) != 1 {
			t.Errorf("group %s reached %v", g, s)
		}
		for n := range s {
			per[n]++
		}
	}
	if per["a"] < 16 || per["b"] < 16 || per["c"] < 16 {
		t.Errorf("groups per server %v, want round robin's 16-17 each", per)
	}
}

// A flow ends after its idle timeout and releases its template.
func TestUDPFlowIdleTimeout(t *testing.T) {
	p, vip := oneServerUDP(t, "    persistence: {}\n    limits: {idle_timeout: 300ms}\n")
	c := udpClient(t, 127, 3, 0, 1)
	if _, _, err := askUDP(c, vip); err != nil {
		t.Fatal(err)
	}
	if n := p.UDPFlows(vip); n != 1 {
		t.Fatalf("%d flows after one datagram, want 1", n)
	}
	if tp := p.Table().List(affinity.Filter{}); len(tp) != 1 || tp[0].Active != 1 {
		t.Fatalf("template while the flow lives: %+v", tp)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.UDPFlows(vip) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the flow outlived its 300ms idle timeout by 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if tp := p.Table().List(affinity.Filter{}); len(tp) != 1 || tp[0].Active != 0 {
		t.Errorf("template after the flow ended: %+v, want idle (released)", tp)
	}
}

// A flow in use lives on past its idle timeout: the reply side's deadline,
// armed once, is moved on when it fires on a flow that saw traffic, so a
// client that keeps talking keeps its one flow (and its source port at the
// server). Datagrams come every 50 ms against a 500 ms timeout, for four
// timeouts.
func TestUDPFlowInUseOutlivesIdleTimeout(t *testing.T) {
	p, vip := oneServerUDP(t, "    limits: {idle_timeout: 500ms}\n")
	c := udpClient(t, 127, 3, 0, 2)
	for i := range 40 {
		if _, _, err := askUDP(c, vip); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := p.Status()[0].Servers[0].Conns; n != 1 {
		t.Fatalf("the client's datagrams made %d flows over 2 s, want 1", n)
	}
}

// At the flow cap the oldest flow goes; memory never grows past it and
// every client is still answered.
func TestUDPFlowCap(t *testing.T) {
	b := udpBackend(t, "a")
	listen := freeUDPAddr(t)
	p := startProxy(t, mustConfig(t, udpConfig(listen, "rr", "    limits: {max_flows: 10}\n", b)), Options{})
	vip := netip.MustParseAddrPort(listen)
	for i := range 50 {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 4, 0, byte(i+1))})
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = askUDP(c, vip)
		c.Close()
		if err != nil {
			t.Fatalf("client %d at the cap: %v", i, err)
		}
		if n := p.UDPFlows(vip); n > 10 {
			t.Fatalf("%d flows, cap is 10", n)
		}
	}
}

// One-packet scheduling (ipvsadm -o) schedules each datagram alone: one
// client socket's datagrams spread over the servers; with persistence they
// stay on one.
func TestUDPOnePacket(t *testing.T) {
	b := []netip.AddrPort{udpBackend(t, "a"), udpBackend(t, "b"), udpBackend(t, "c")}
	for _, tc := range []struct {
		extra string
		want  int
	}{
		{"    one_packet: true\n", 3},
		{"    one_packet: true\n    persistence: {}\n", 1},
	} {
		listen := freeUDPAddr(t)
		p := startProxy(t, mustConfig(t, udpConfig(listen, "rr", tc.extra, b...)), Options{})
		vip := netip.MustParseAddrPort(listen)
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 5, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		var mu sync.Mutex
		for range 30 {
			name, _, err := askUDP(c, vip)
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			seen[name] = true
			mu.Unlock()
		}
		c.Close()
		if len(seen) != tc.want {
			t.Errorf("%q: one client's datagrams reached %v, want %d servers", strings.TrimSpace(tc.extra), seen, tc.want)
		}
		if n := p.UDPFlows(vip); n != 0 {
			t.Errorf("one-packet mode kept %d flows", n)
		}
	}
}

// A datagram through an established flow allocates nothing: the read
// loops reuse their buffers and netip addresses are values. The client
// below reuses its buffers too, so the process-wide count is the proxy's.
func TestUDPNoAllocationPerDatagram(t *testing.T) {
	if raceDetector {
		t.Skip("under the race detector sync.Pool drops items at random; .ci/run runs this test without it")
	}
	b := udpBackend(t, "a")
	listen := freeUDPAddr(t)
	startProxy(t, mustConfig(t, udpConfig(listen, "rr", "    persistence: {}\n", b)), Options{})
	vip := netip.MustParseAddrPort(listen)
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 6, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg, buf := []byte("who?"), make([]byte, 2048)
	roundTrip := func() {
		c.WriteToUDPAddrPort(msg, vip)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatal(err)
		}
	}
	roundTrip() // the flow is made here, with its allocations
	if allocs := testing.AllocsPerRun(500, roundTrip); allocs >= 1 {
		t.Errorf("%.2f allocations per datagram round trip through an established flow, want 0", allocs)
	}
}

// udp_max_flows bounds the flows of all services together: at the total
// cap a new flow pushes out the oldest flow of its own service, and every
// client is still answered.
func TestUDPTotalFlowCap(t *testing.T) {
	b := udpBackend(t, "a")
	l1, l2 := freeUDPAddr(t), freeUDPAddr(t)
	cfg := fmt.Sprintf(`udp_max_flows: 10
services:
  - {name: one, protocol: udp, listen: "%s", limits: {max_flows: 100}, servers: [{address: "%s"}]}
  - {name: two, protocol: udp, listen: "%s", limits: {max_flows: 100}, servers: [{address: "%s"}]}
`, l1, b, l2, b)
	p := startProxy(t, mustConfig(t, cfg), Options{})
	v1, v2 := netip.MustParseAddrPort(l1), netip.MustParseAddrPort(l2)
	for i := range 30 {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 7, 0, byte(i+1))})
		if err != nil {
			t.Fatal(err)
		}
		for _, vip := range []netip.AddrPort{v1, v2} {
			if _, _, err := askUDP(c, vip); err != nil {
				t.Fatalf("client %d at the total cap: %v", i, err)
			}
		}
		c.Close()
		if n := p.UDPFlows(v1) + p.UDPFlows(v2); n > 10 {
			t.Fatalf("%d flows in all, udp_max_flows is 10", n)
		}
	}
}

// A reload that lowers limits.max_flows applies it to the running service:
// it used to report success and keep the old cap.
func TestUDPFlowCapFollowsReload(t *testing.T) {
	b := udpBackend(t, "a")
	listen := freeUDPAddr(t)
	p := startProxy(t, mustConfig(t, udpConfig(listen, "rr", "    limits: {max_flows: 10}\n", b)), Options{})
	vip := netip.MustParseAddrPort(listen)
	ask := func(from int) {
		t.Helper()
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 5, 0, byte(from))})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, _, err := askUDP(c, vip); err != nil {
			t.Fatalf("client %d: %v", from, err)
		}
	}
	for i := range 8 {
		ask(i + 1)
	}
	if n := p.UDPFlows(vip); n != 8 {
		t.Fatalf("%d flows before the reload, want 8", n)
	}
	if err := p.Reload(mustConfig(t, udpConfig(listen, "rr", "    limits: {max_flows: 3}\n", b))); err != nil {
		t.Fatal(err)
	}
	if n := p.UDPFlows(vip); n != 3 {
		t.Errorf("%d flows right after lowering max_flows to 3", n)
	}
	for i := range 5 {
		ask(20 + i)
		if n := p.UDPFlows(vip); n > 3 {
			t.Fatalf("%d flows after the reload, cap is 3", n)
		}
	}
}

// One-packet datagrams in flight are bounded: to a server that never
// answers, each waits for its reply holding a socket, and past the bound
// (a sixteenth of the descriptor budget) datagrams are dropped. Each used
// to get a socket, a goroutine and a 64 KiB buffer, with no bound at all.
func TestUDPOnePacketIsBounded(t *testing.T) {
	silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	listen := freeUDPAddr(t)
	const limit = 1024 // budget: 960 for clients, 60 one-packet datagrams
	p := startProxy(t, mustConfig(t, udpConfig(listen, "rr", "    one_packet: true\n    limits: {idle_timeout: 3s}\n", silent.LocalAddr().(*net.UDPAddr).AddrPort())),
		Options{Descriptors: limit})
	bound := p.caps.Load().OnePacket
	if bound != 60 {
		t.Fatalf("one-packet bound %d at a limit of %d, want 60", bound, limit)
	}
	base := openFDs(t)
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 5, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	vip := netip.MustParseAddrPort(listen)
	got := 0
	for range 500 {
		c.WriteToUDPAddrPort([]byte("q"), vip)
	}
	// Wait until the server has seen what tether sent on (not a timing
	// claim: the datagrams are all queued already).
	silent.SetReadDeadline(time.Now().Add(time.Second))
	for buf := make([]byte, 16); ; got++ {
		if _, _, err := silent.ReadFromUDPAddrPort(buf); err != nil {
			break
		}
	}
	if got > bound || got == 0 {
		t.Errorf("the server got %d of 500 datagrams, want at most the bound %d (and some)", got, bound)
	}
	if n := p.onePackets.Load(); n > int64(bound) {
		t.Errorf("%d datagrams in flight, bound %d", n, bound)
	}
	if used := openFDs(t) - base; used > bound+2 {
		t.Errorf("%d descriptors for one-packet datagrams in flight, bound %d", used, bound)
	}
}
