package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherlb/tether/testenv"
)

// checkMarkPath asserts how a mark class's TCP flows on the VIP's ports
// reach the proxy, as the kernel shows it: listened, a listening socket
// on each VIP:port and no TCP tproxy rule; else the rule, and no such
// socket.
func checkMarkPath(t *testing.T, env *testenv.Env, listened bool, ports ...int) {
	t.Helper()
	table, err := execIn(env.LB, "nft", "list", "table", "inet", "tether")
	if err != nil {
		t.Fatalf("nft list table inet tether: %v\n%s", err, table)
	}
	if tproxied := strings.Contains(table, "meta l4proto tcp tproxy"); tproxied == listened {
		t.Errorf("listened %v, but the table's TCP tproxy rule is there: %v\n%s", listened, tproxied, table)
	}
	socks := vipListeners(t, env)
	for _, port := range ports {
		ap := netip.AddrPortFrom(testenv.VIP, uint16(port))
		if socks[ap] != listened {
			t.Errorf("listened %v, but a socket listens on %s: %v (%v)", listened, ap, socks[ap], socks)
		}
	}
}

// vipListeners are the addresses TCP sockets listen on in the LB host.
func vipListeners(t *testing.T, env *testenv.Env) map[netip.AddrPort]bool {
	t.Helper()
	out, err := execIn(env.LB, "ss", "-Htln")
	if err != nil {
		t.Fatalf("ss -Htln: %v\n%s", err, out)
	}
	socks := map[netip.AddrPort]bool{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 4 {
			if ap, err := netip.ParseAddrPort(f[3]); err == nil {
				socks[ap] = true
			}
		}
	}
	return socks
}

// A reload that moves a class from listeners to TPROXY and back: an
// open connection survives both moves, new connections are served on each
// path, and the client keeps its backend throughout (one template per
// mark, whichever socket accepted).
func TestReloadMovesClassBetweenPaths(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 4, Backends: 3, Label: "mlmove"})
	serveNames(t, env, 80, 443)
	cfg := func(tproxy string) string { return "tproxy: " + tproxy + "\n" + markConfig(true) }
	p, _ := startInLB(t, env, cfg("auto"), Options{})
	checkMarkPath(t, env, true, 80, 443)
	ctx := context.Background()
	src := env.Clients[0].Addr(0)
	open := dialOpen(t, env, src, netip.AddrPortFrom(testenv.VIP, 443))
	first := open.backend
	for i, tproxy := range []string{"always", "auto"} {
		if err := env.LB.Do(func() error { return p.Reload(mustConfig(t, cfg(tproxy))) }); err != nil {
			t.Fatal(err)
		}
		checkMarkPath(t, env, tproxy == "auto", 80, 443)
		want := []string(nil)
		if tproxy == "auto" {
			want = []string{netip.AddrPortFrom(testenv.VIP, 80).String(), netip.AddrPortFrom(testenv.VIP, 443).String()}
		}
		if got := p.Status()[0].Listeners; !slices.Equal(got, want) {
			t.Errorf("tproxy %s: status lists listeners %v, want %v", tproxy, got, want)
		}
		open.echo(t, fmt.Sprintf("still there after reload %d?\n", i+1), "after the reload to tproxy "+tproxy)
		for _, v := range env.Clients[0].Drive(ctx, testenv.VIP, []int{80, 443}, 1) {
			if v.Err != nil {
				t.Fatalf("tproxy %s: %s to port %d: %v", tproxy, v.Src, v.Port, v.Err)
			}
			if v.Src == src && v.Backend != first {
				t.Errorf("tproxy %s: the client went to %s on port %d, %s before", tproxy, v.Backend, v.Port, first)
			}
		}
	}
}

// A class whose address:port another socket already holds (without
// SO_REUSEPORT) is TPROXYed instead, with a warning, and still served:
// host trouble costs the speed of the listened path, not the service.
func TestMarkClassFallsBackToTProxy(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 4, Backends: 1, Label: "mlheld"})
	serveNames(t, env, 80, 443)
	squat(t, env, netip.AddrPortFrom(testenv.VIP, 443))
	var logs bytes.Buffer
	cfg := fmt.Sprintf("marks:\n  - name: web\n    mark: 3\n    addresses: [%s]\n    ports: [80, 443]\nservices:\n  - name: web\n    fwmark: 3\n    servers: [{address: %s}]\n", testenv.VIP, testenv.BackendAddr(0))
	startInLB(t, env, cfg, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if !strings.Contains(logs.String(), "cannot be listened on; its TCP flows are TPROXYed") {
		t.Errorf("no warning about the held address:\n%s", logs.String())
	}
	table, _ := execIn(env.LB, "nft", "list", "table", "inet", "tether")
	if !strings.Contains(table, "meta l4proto tcp tproxy") {
		t.Errorf("the class is not TPROXYed:\n%s", table)
	}
	// Port 80's listener, opened before 443's failed, is closed too: the
	// class has one path.
	if socks := vipListeners(t, env); socks[netip.AddrPortFrom(testenv.VIP, 80)] {
		t.Errorf("a listener on the VIP's port 80 is left: %v", socks)
	}
	s := testenv.Summarize(env.Clients[0].Drive(context.Background(), testenv.VIP, []int{80, 443}, 1))
	if s.Failed != 0 || s.Spread() != "backend0=8" {
		t.Errorf("%d failed (%v), spread %s: want every connection at backend0, none at the other socket", s.Failed, s.Errors, s.Spread())
	}
}

// A reload that gives a listened class's address to a `listen:` service,
// and back: both reloads succeed with one event loop (a listener without
// SO_REUSEPORT could not bind the address the other still holds), the
// open connection survives them, and new ones are served each time.
func TestReloadMovesAddressBetweenMarkAndListen(t *testing.T) {
	env, mark := markOnVIP(t, "mlswap")
	plain := fmt.Sprintf("services:\n  - name: web\n    listen: %s\n    servers: [{address: %s:80}]\n", netip.AddrPortFrom(testenv.VIP, 80), testenv.BackendAddr(0))
	p, _ := startInLB(t, env, mark, Options{TCPLoops: 1})
	checkMarkPath(t, env, true, 80)
	ctx := context.Background()
	open := dialOpen(t, env, env.Clients[0].Addr(0), netip.AddrPortFrom(testenv.VIP, 80))
	for i, cfg := range []string{plain, mark} {
		if err := env.LB.Do(func() error { return p.Reload(mustConfig(t, cfg)) }); err != nil {
			t.Fatalf("reload %d: %v", i+1, err)
		}
		open.echo(t, fmt.Sprintf("still there after reload %d?\n", i+1), fmt.Sprintf("after reload %d", i+1))
		if s := testenv.Summarize(env.Clients[0].Drive(ctx, testenv.VIP, []int{80}, 2)); s.Failed != 0 {
			t.Errorf("after reload %d: %d of %d failed: %v", i+1, s.Failed, s.Visits, s.Errors)
		}
	}
	checkMarkPath(t, env, true, 80)
}

// A reload that moves an address between a mark class and a `listen:`
// service hands the listening sockets on instead of binding new ones and
// closing the old: connections that finished their handshake while
// neither owner accepted (waiting in the backlog) are served by the new
// owner, not reset with the old sockets.
func TestReloadMoveKeepsQueuedConnections(t *testing.T) {
	env, mark := markOnVIP(t, "mlqueue")
	vip := netip.AddrPortFrom(testenv.VIP, 80)
	plain := fmt.Sprintf("services:\n  - name: web\n    listen: %s\n    servers: [{address: %s:80}]\n", vip, testenv.BackendAddr(0))
	p, _ := startInLB(t, env, mark, Options{TCPLoops: 2})
	checkMarkPath(t, env, true, 80)
	var queued []net.Conn
	t.Cleanup(func() {
		for _, c := range queued {
			c.Close()
		}
	})
	p.leftHook = func(ap netip.AddrPort) {
		if ap != vip {
			return
		}
		for range 16 { // spread over the sockets by the kernel's reuseport hash
			c, err := env.Clients[0].Dial(context.Background(), "tcp", env.Clients[0].Addr(0), vip.String())
			if err != nil {
				t.Errorf("dial while the listener changes hands: %v", err)
				return
			}
			queued = append(queued, c)
		}
	}
	for i, cfg := range []string{plain, mark} {
		queued = queued[:0]
		if err := env.LB.Do(func() error { return p.Reload(mustConfig(t, cfg)) }); err != nil {
			t.Fatalf("reload %d: %v", i+1, err)
		}
		if len(queued) == 0 {
			t.Fatalf("reload %d: no listener of %s changed hands", i+1, vip)
		}
		lost := 0
		for _, c := range queued {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
				lost++
				t.Logf("reload %d: a connection queued during the move: %v", i+1, err)
			}
			c.Close()
		}
		if lost > 0 {
			t.Errorf("reload %d: %d of %d connections queued while the address changed hands were lost", i+1, lost, len(queued))
		}
	}
	checkMarkPath(t, env, true, 80)
}

// A reload that would move a class's address to a `listen:` service, and
// fails on a later service, leaves the class's sockets as they were: the
// failed plan's cleanup closes only what it opened itself.
func TestFailedReloadKeepsTheClassListening(t *testing.T) {
	env, mark := markOnVIP(t, "mlfail")
	vip := netip.AddrPortFrom(testenv.VIP, 80)
	p, _ := startInLB(t, env, mark, Options{TCPLoops: 2})
	squat(t, env, netip.AddrPortFrom(testenv.VIP, 8080))
	bad := fmt.Sprintf("services:\n  - name: web\n    listen: %s\n    servers: [{address: %s:80}]\n  - name: other\n    listen: %s:8080\n    servers: [{address: %s:80}]\n", vip, testenv.BackendAddr(0), testenv.VIP, testenv.BackendAddr(0))
	if err := env.LB.Do(func() error { return p.Reload(mustConfig(t, bad)) }); err == nil {
		t.Fatal("a reload with an address another socket holds succeeded")
	}
	checkMarkPath(t, env, true, 80)
	if s := testenv.Summarize(env.Clients[0].Drive(context.Background(), testenv.VIP, []int{80}, 2)); s.Failed != 0 {
		t.Errorf("after the failed reload: %d of %d failed: %v", s.Failed, s.Visits, s.Errors)
	}
}

// A class whose VIP is not an address of the host at start is TPROXYed;
// when the address arrives (keepalived making the host master) tether
// listens for it without a reload, and serves it; when the address goes,
// the class is TPROXYed again and the listener closed.
func TestMarkClassFollowsAddresses(t *testing.T) {
	vip := netip.MustParseAddr("198.18.0.11") // on the client-side link, not yet the balancer's
	env, ap, cfg := markOnAbsentVIP(t, "mladdr", vip, testenv.BackendAddr(0))
	p, _ := startInLB(t, env, cfg, Options{})
	listening := func() bool { return vipListeners(t, env)[ap] }
	tproxied := func() bool {
		table, _ := execIn(env.LB, "nft", "list", "table", "inet", "tether")
		return strings.Contains(table, "meta l4proto tcp tproxy")
	}
	if listening() || !tproxied() {
		t.Fatalf("before the address: listening %v, tproxied %v; want TPROXY", listening(), tproxied())
	}
	if out, err := execIn(env.LB, "ip", "addr", "add", vip.String()+"/32", "dev", "lo"); err != nil {
		t.Fatalf("ip addr add: %v %s", err, out)
	}
	if !waitFor(5*time.Second, func() bool { return listening() && !tproxied() }) {
		t.Fatalf("5 s after the address came: listening %v, tproxied %v; want a listener and no tproxy rule", listening(), tproxied())
	}
	if got := p.Status()[0].Listeners; !slices.Equal(got, []string{ap.String()}) {
		t.Errorf("status listeners %v, want [%s]", got, ap)
	}
	if s := testenv.Summarize(env.Clients[0].Drive(context.Background(), vip, []int{80}, 1)); s.Failed != 0 {
		t.Errorf("through the listener: %d of %d failed: %v", s.Failed, s.Visits, s.Errors)
	}
	if out, err := execIn(env.LB, "ip", "addr", "del", vip.String()+"/32", "dev", "lo"); err != nil {
		t.Fatalf("ip addr del: %v %s", err, out)
	}
	if !waitFor(5*time.Second, func() bool { return !listening() && tproxied() }) {
		t.Fatalf("5 s after the address went: listening %v, tproxied %v; want TPROXY again", listening(), tproxied())
	}
}

// An IPv6 VIP that arrives tentative (duplicate address detection under
// way) cannot be bound yet: its class falls back to TPROXY, and the
// address event that ends the detection gives it its listener.
func TestMarkClassWaitsForTentativeAddress(t *testing.T) {
	vip := netip.MustParseAddr("2001:2::11") // on the client-side link, not yet the balancer's
	env, ap, cfg := markOnAbsentVIP(t, "mldad", vip, testenv.BackendAddr6(0))
	var logs syncBuffer
	startInLB(t, env, cfg, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	// Without nodad: the kernel probes for a second (dad_transmits 1).
	if out, err := execIn(env.LB, "ip", "addr", "add", vip.String()+"/128", "dev", "br-c"); err != nil {
		t.Fatalf("ip addr add: %v %s", err, out)
	}
	if !waitFor(8*time.Second, func() bool { return vipListeners(t, env)[ap] }) {
		t.Fatalf("8 s after the address came: no listener on %s\n%s", ap, logs.String())
	}
	if !strings.Contains(logs.String(), "cannot assign requested address") {
		t.Logf("the class was never tried while tentative (the detection ended first); logs:\n%s", logs.String())
	}
	if s := testenv.Summarize(env.Clients[0].Drive(context.Background(), vip, []int{80}, 1)); s.Failed != 0 {
		t.Errorf("through the listener: %d of %d failed: %v", s.Failed, s.Visits, s.Errors)
	}
}

// squat holds ap in the balancer's namespace until the test ends, with a
// listener without SO_REUSEPORT: tether cannot bind beside it.
func squat(t *testing.T, env *testenv.Env, ap netip.AddrPort) {
	var ln net.Listener
	if err := env.LB.Do(func() (err error) {
		ln, err = net.Listen("tcp", ap.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
}

// markOnVIP is a test host whose one backend serves port 80, and the
// config of a mark class over the balancer's VIP:80 sent to it.
func markOnVIP(t *testing.T, label string) (*testenv.Env, string) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 2, Backends: 1, Label: label})
	serveNames(t, env, 80)
	mark := fmt.Sprintf("marks:\n  - name: web\n    mark: 3\n    addresses: [%s]\n    ports: [80]\nservices:\n  - name: web\n    fwmark: 3\n    servers: [{address: %s}]\n", testenv.VIP, testenv.BackendAddr(0))
	return env, mark
}

// markOnAbsentVIP is a test host whose one backend serves port 80, and the
// config of a mark class over vip:80 (not yet an address of the balancer)
// sent to server.
func markOnAbsentVIP(t *testing.T, label string, vip, server netip.Addr) (*testenv.Env, netip.AddrPort, string) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 4, Backends: 1, Label: label})
	serveNames(t, env, 80)
	cfg := fmt.Sprintf("marks:\n  - name: web\n    mark: 3\n    addresses: [\"%s\"]\n    ports: [80]\nservices:\n  - name: web\n    fwmark: 3\n    servers: [{address: \"%s\"}]\n", vip, server)
	return env, netip.AddrPortFrom(vip, 80), cfg
}

// A burst of address events that overflows the watch's socket while the
// control loop is busy (ENOBUFS) does not end the watch: the address that
// comes after it still gives its class a listener.
func TestAddressWatchSurvivesOverflow(t *testing.T) {
	vip := netip.MustParseAddr("198.18.0.12")
	env, ap, cfg := markOnAbsentVIP(t, "mlnobuf", vip, testenv.BackendAddr(0))
	p := New(mustConfig(t, cfg), Options{Do: env.LB.Do})
	p.addrBuffer = 4096
	waiting := make(chan struct{}, 1)
	p.addrHook = func() {
		select {
		case waiting <- struct{}{}:
		default:
		}
	}
	if err := env.LB.Do(p.Start); err != nil {
		t.Fatal(err)
	}
	defer env.LB.Do(func() error { return p.Shutdown(context.Background()) })
	// Hold the control loop; an event makes the watch wait for it, and
	// the burst then finds nobody reading.
	hold, held := make(chan struct{}), make(chan struct{})
	go p.control(func() error { close(held); <-hold; return nil })
	<-held
	if out, err := execIn(env.LB, "ip", "addr", "add", "198.18.99.1/32", "dev", "lo"); err != nil {
		t.Fatalf("ip addr add: %v %s", err, out)
	}
	<-waiting
	var batch strings.Builder
	for i := range 300 {
		fmt.Fprintf(&batch, "addr add 198.18.%d.%d/32 dev lo\n", 100+i/250, 1+i%250)
	}
	file := filepath.Join(t.TempDir(), "batch")
	os.WriteFile(file, []byte(batch.String()), 0o600)
	if out, err := execIn(env.LB, "ip", "-batch", file); err != nil {
		t.Fatalf("ip -batch: %v %s", err, out)
	}
	close(hold)
	if out, err := execIn(env.LB, "ip", "addr", "add", vip.String()+"/32", "dev", "lo"); err != nil {
		t.Fatalf("ip addr add: %v %s", err, out)
	}
	if !waitFor(5*time.Second, func() bool { return vipListeners(t, env)[ap] }) {
		t.Fatalf("5 s after the address came (after an overflow): no listener on %s", ap)
	}
}
