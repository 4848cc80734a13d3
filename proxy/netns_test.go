package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// startInLB runs a proxy for cfg on the env's load-balancer host (its
// sockets and rules live there) and stops it, with a drain deadline, when
// the test ends or when the returned stop is called.
func startInLB(t *testing.T, env *testenv.Env, cfg string, o Options) (*Proxy, func()) {
	t.Helper()
	o.Do = env.LB.Do
	p := New(mustConfig(t, cfg), o)
	if err := env.LB.Do(p.Start); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			env.LB.Do(func() error { return p.Shutdown(ctx) })
		})
	}
	t.Cleanup(stop)
	return p, stop
}

// openConn is a connection held open through the proxy to a backend's
// name-and-echo server (serveNames), and the backend that greeted it.
type openConn struct {
	c       net.Conn
	r       *bufio.Reader
	backend string
}

// dialOpen opens a connection from src to ap on env's first client and
// reads the greeting; the test's end closes it.
func dialOpen(t *testing.T, env *testenv.Env, src netip.Addr, ap netip.AddrPort) *openConn {
	t.Helper()
	c, err := env.Clients[0].Dial(context.Background(), "tcp", src, ap.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	o := &openConn{c: c, r: bufio.NewReader(c)}
	first, err := o.r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	o.backend = strings.TrimSpace(first)
	return o
}

// echo checks that the connection still carries msg there and back,
// after what when says.
func (o *openConn) echo(t *testing.T, msg, when string) {
	t.Helper()
	if _, err := io.WriteString(o.c, msg); err != nil {
		t.Fatalf("open connection %s: %v", when, err)
	}
	if got, err := o.r.ReadString('\n'); err != nil || got != msg {
		t.Fatalf("open connection %s: %q, %v", when, got, err)
	}
}

// serveNames starts testenv's name-and-echo server on each port of every
// backend of env, and returns them backend by backend.
func serveNames(t *testing.T, env *testenv.Env, ports ...int) []*testenv.Server {
	t.Helper()
	var out []*testenv.Server
	for _, b := range env.Backends {
		for _, port := range ports {
			s, err := b.ServeName(port)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
	}
	return out
}

// serverLines are env's backends on port as the servers of a service,
// one YAML list line each.
func serverLines(env *testenv.Env, port int) string {
	var b strings.Builder
	for i := range env.Backends {
		fmt.Fprintf(&b, "      - address: %s:%d\n", testenv.BackendAddr(i), port)
	}
	return b.String()
}

// needTools skips the test without these programs, and fails it in CI,
// where .ci/run installs them.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing in CI; .ci/run installs it", tool)
			}
			t.Skipf("%s is not installed", tool)
		}
	}
}

// ftpDownloads fetches ftp://VIP/data.bin with curl (passive mode) from
// each of the client host's srcs, 8 at a time, and counts the downloads
// that came out equal to file; why holds the first failures.
func ftpDownloads(t *testing.T, env *testenv.Env, srcs []netip.Addr, maxTime string, file []byte) (ok int, why []string) {
	dir := t.TempDir()
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, src := range srcs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out := filepath.Join(dir, fmt.Sprintf("%d.bin", i))
			var stderr bytes.Buffer
			vip := testenv.VIP.String()
			if src.Is6() {
				vip = "[" + testenv.VIP6.String() + "]"
			}
			// -g: the brackets of an IPv6 address are not a glob.
			cmd := exec.Command("curl", "-sS", "-g", "--ftp-pasv", "--max-time", maxTime, "--interface", src.String(), "-o", out, "ftp://"+vip+"/data.bin")
			cmd.Stderr = &stderr
			err := env.Clients[0].Start(cmd)
			if err == nil {
				err = cmd.Wait()
			}
			got, _ := os.ReadFile(out)
			mu.Lock()
			defer mu.Unlock()
			if err == nil && md5.Sum(got) == md5.Sum(file) {
				ok++
			} else if len(why) < 3 {
				why = append(why, fmt.Sprintf("%s: %v %s (%d bytes)", src, err, strings.TrimSpace(stderr.String()), len(got)))
			}
		}()
	}
	wg.Wait()
	return ok, why
}

// execIn runs a command in host h and returns its combined output.
func execIn(h *testenv.Host, name string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := h.Start(cmd); err != nil {
		return "", err
	}
	err := cmd.Wait()
	return out.String(), err
}

// The stickiness test across namespaces: 3 client hosts with 20 source
// addresses each, the proxy on the load-balancer host's VIP, 3 backends.
// With a /24 netmask every client and every /24 reaches one backend.
func TestStickinessAcrossNamespaces(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 3, AddrsPerClient: 20, Backends: 3, Label: "sticky"})
	serveNames(t, env, 8080)
	servers := serverLines(env, 8080)
	startInLB(t, env, fmt.Sprintf("services:\n  - name: web\n    listen: %s:80\n    scheduler: rr\n    persistence: {netmask: 255.255.255.0}\n    servers:\n%s", testenv.VIP, servers), Options{})

	var visits []testenv.Visit
	for _, c := range env.Clients {
		visits = append(visits, c.Drive(context.Background(), testenv.VIP, []int{80}, 3)...)
	}
	s := testenv.Summarize(visits)
	if s.Failed != 0 {
		t.Fatalf("%d of %d connections failed: %v", s.Failed, s.Visits, s.Errors)
	}
	if len(s.Mixed) != 0 {
		t.Errorf("clients that saw two backends: %v", s.Mixed)
	}
	groups := s.Groups(24)
	for g, b := range groups {
		if len(b) != 1 {
			t.Errorf("group %s reached %v", g, b)
		}
	}
	// 60 sources, 4 to a /24: 15 groups, round robin over 3 backends.
	if len(groups) != 15 || s.Spread() != "backend0=60 backend1=60 backend2=60" {
		t.Errorf("%d groups, spread %s; want 15 groups, 60 connections each", len(groups), s.Spread())
	}
}

// markConfig is one mark over HTTP and HTTPS on the VIP; the servers have
// no port, so each connection keeps the port the client dialled.
func markConfig(persistent bool) string {
	persistence := "    persistence: {timeout: 300s}\n"
	if !persistent {
		persistence = ""
	}
	return fmt.Sprintf(`marks:
  - name: web
    mark: 0x100
    addresses: [%s]
    ports: [80, 443]
mark_mask: 0xff00
services:
  - name: web
    fwmark: 0x100
    scheduler: rr
%s    servers:
      - address: %s
      - address: %s
      - address: %s
`, testenv.VIP, persistence, testenv.BackendAddr(0), testenv.BackendAddr(1), testenv.BackendAddr(2))
}

// 200 client addresses connect to 80, then 443, then 80 again through a
// mark service: no client sees two backends. The same run without
// persistence mixes clients, so the test can tell. Both ways a class's TCP
// flows reach the proxy: listeners on the VIP's two ports (tproxy: auto,
// the VIP is local) and TPROXY (always).
func TestMarkServicePersistenceAcrossPorts(t *testing.T) {
	for _, tproxy := range []string{config.TProxyAuto, config.TProxyAlways} {
		t.Run(tproxy, func(t *testing.T) { markPersistenceAcrossPorts(t, "proxy", "mark", "tproxy: "+tproxy+"\n") })
	}
}

// markPersistenceAcrossPorts runs the test above in a data-path mode; the
// director also holds one flow per connection it chose.
func markPersistenceAcrossPorts(t *testing.T, mode, label, extra string) {
	env := testenv.Start(t, testenv.Spec{Clients: 2, AddrsPerClient: 100, Backends: 3, Label: label})
	serveNames(t, env, 80, 443)
	run := func(persistent bool) testenv.Summary {
		p, stop := startInLB(t, env, "mode: "+mode+"\n"+extra+markConfig(persistent), Options{})
		defer stop()
		if mode == "proxy" {
			checkMarkPath(t, env, !strings.Contains(extra, config.TProxyAlways), 80, 443)
		}
		var visits []testenv.Visit
		for _, c := range env.Clients {
			visits = append(visits, c.Drive(context.Background(), testenv.VIP, []int{80, 443, 80}, 1)...)
		}
		s := testenv.Summarize(visits)
		if s.Failed != 0 {
			t.Fatalf("%d of %d connections failed: %v", s.Failed, s.Visits, s.Errors)
		}
		// Every connection is closed: the director holds none of the 600
		// flows it chose or adopted (conntrack reports each close).
		if mode == "director" && !waitFor(5*time.Second, func() bool { return p.DirectorFlows() == 0 }) {
			t.Errorf("director holds %d flows after every connection closed, want 0", p.DirectorFlows())
		}
		return s
	}
	s := run(true)
	if s.Visits != 600 || len(s.Mixed) != 0 {
		t.Errorf("%d visits; %d clients saw two backends: %v", s.Visits, len(s.Mixed), s.Mixed)
	}
	if len(s.PerBackend) != 3 {
		t.Errorf("spread %s: every backend should serve some clients", s.Spread())
	}
	control := run(false)
	if len(control.Mixed) == 0 {
		t.Errorf("without persistence no client saw two backends: the test cannot tell")
	}
	t.Logf("%s with persistence: 0 of 200 clients mixed, %s; without: %d mixed", mode, s.Spread(), len(control.Mixed))
}

// A reload that adds a port to a class: the open connection survives the
// table's replacement, and the new port is marked, so the client reaches
// the same backend on it (one template per mark).
func TestReloadAddsPortToClass(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 4, Backends: 3, Label: "addport"})
	serveNames(t, env, 80, 8443)
	cfgWith := func(ports string) string {
		return fmt.Sprintf("marks:\n  - name: web\n    mark: 7\n    addresses: [%s]\n    ports: [%s]\nservices:\n  - name: web\n    fwmark: 7\n    scheduler: rr\n    persistence: {}\n    servers:\n      - address: %s\n      - address: %s\n      - address: %s\n",
			testenv.VIP, ports, testenv.BackendAddr(0), testenv.BackendAddr(1), testenv.BackendAddr(2))
	}
	p, _ := startInLB(t, env, cfgWith("80"), Options{})
	ctx := context.Background()
	src := env.Clients[0].Addr(0)
	open := dialOpen(t, env, src, netip.AddrPortFrom(testenv.VIP, 80))
	if s := testenv.Summarize(env.Clients[0].Drive(ctx, testenv.VIP, []int{8443}, 1)); s.Failed == 0 {
		t.Fatalf("port 8443 answered before it was in the class: %s", s.Spread())
	}

	if err := env.LB.Do(func() error { return p.Reload(mustConfig(t, cfgWith("80, 8443"))) }); err != nil {
		t.Fatal(err)
	}
	// The open connection still works.
	open.echo(t, "still there?\n", "after the reload")
	// The new port is marked, and the client keeps its backend on it.
	visits := env.Clients[0].Drive(ctx, testenv.VIP, []int{8443}, 1)
	for _, v := range visits {
		if v.Err != nil {
			t.Fatalf("port 8443 after the reload: %v", v.Err)
		}
		if v.Src == src && v.Backend != open.backend {
			t.Errorf("client went to %s on 8443 but %s on 80", v.Backend, open.backend)
		}
	}
}

// FTP through one mark over port 21 and the passive range: vsftpd on three
// backends announces the VIP for passive data; curl downloads from 40
// source addresses. With persistence every data connection follows its
// control connection and every download is intact; without, downloads
// fail (the control that shows the test can).
func TestFTPThroughMark(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 40, Backends: 3, Label: "ftp"})
	needTools(t, "curl", "vsftpd")
	file := make([]byte, 256<<10)
	rand.NewChaCha8([32]byte{9}).Read(file)
	for _, b := range env.Backends {
		if err := b.StartFTP(testenv.FTPOptions{PasvAddress: testenv.VIP, PasvMinPort: 30000, PasvMaxPort: 30099, Files: map[string][]byte{"data.bin": file}}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := func(persistence string) string {
		return fmt.Sprintf("marks:\n  - name: ftp\n    mark: 21\n    addresses: [%s]\n    ports: [21, 30000-30099]\nservices:\n  - name: ftp\n    fwmark: 21\n    scheduler: rr\n%s    servers:\n      - address: %s\n      - address: %s\n      - address: %s\n",
			testenv.VIP, persistence, testenv.BackendAddr(0), testenv.BackendAddr(1), testenv.BackendAddr(2))
	}
	download := func(persistence string, clients int, maxTime string) (ok, bad int, why []string) {
		// stop drains with a deadline, as tether run does: after a failed
		// download vsftpd holds its control connection until its own 60 s
		// data timeout.
		_, stop := startInLB(t, env, cfg(persistence), Options{})
		defer stop()
		ok, why = ftpDownloads(t, env, env.Clients[0].Addrs[:clients], maxTime, file)
		return ok, clients - ok, why
	}
	if ok, bad, why := download("    persistence: {timeout: 60s}\n", 40, "15"); bad != 0 || ok != 40 {
		t.Errorf("with persistence %d of %d downloads failed; first: %v", bad, ok+bad, why)
	}
	// The control needs only a few clients: a failed download waits out
	// curl's --max-time. One connect attempt: otherwise a data connection
	// refused by the wrong server fails over until it finds the right one.
	// Four clients, not six: rr hands out the 8 connections' servers in
	// turn, 3 of them to one server, which cannot be split into pairs of a
	// control and a data connection, so at least one download must fail,
	// in any order. Six clients can all pair up.
	if ok, bad, _ := download("    limits: {connect_attempts: 1}\n", 4, "4"); bad == 0 {
		t.Errorf("without persistence all %d downloads succeeded: the test cannot tell", ok)
	}
}

// A VIP that is not an address of the load balancer needs policy routing
// (ip rule iif br-c fwmark M lookup 100, local routes in 100): with
// tproxy_ingress set, clients reach it; without, they do not (the control).
func TestNonLocalVIPNeedsPolicyRouting(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 8, Backends: 2, Label: "route"})
	serveNames(t, env, 80)
	vip := netip.MustParseAddr("198.19.128.10") // routed to the lb, not on it
	run := func(ingress string) testenv.Summary {
		cfg := fmt.Sprintf("%smarks:\n  - name: web\n    mark: 5\n    addresses: [%s]\n    ports: [80]\nservices:\n  - name: web\n    fwmark: 5\n    persistence: {}\n    servers: [{address: %s}, {address: %s}]\n",
			ingress, vip, testenv.BackendAddr(0), testenv.BackendAddr(1))
		_, stop := startInLB(t, env, cfg, Options{})
		defer stop()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return testenv.Summarize(env.Clients[0].Drive(ctx, vip, []int{80}, 1))
	}
	if s := run("tproxy_ingress: [br-c]\n"); s.Failed != 0 || len(s.Mixed) != 0 {
		t.Fatalf("with policy routing: %d of %d failed: %v", s.Failed, s.Visits, s.Errors)
	}
	if s := run(""); s.Failed == 0 {
		t.Errorf("without policy routing a non-local VIP answered: the test cannot tell")
	}
	// Stop removed the rules.
	rules, _ := execIn(env.LB, "ip", "rule")
	if strings.Contains(rules, "lookup 100") {
		t.Errorf("rules left after stop:\n%s", rules)
	}
}

// A persistent port-0 service (listen: VIP:0) serves every port of the VIP
// through a mark class, with one template per client across ports; a
// service on a specific port of the same VIP keeps that port.
func TestPortZeroServiceSpansEveryPort(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 12, Backends: 3, Label: "port0"})
	serveNames(t, env, 80, 5000, 8080)
	cfg := fmt.Sprintf("services:\n  - name: all\n    listen: %s:0\n    scheduler: rr\n    persistence: {}\n    servers: [{address: %s}, {address: %s}]\n  - name: admin\n    listen: %s:8080\n    servers: [{address: %s:8080}]\n",
		testenv.VIP, testenv.BackendAddr(0), testenv.BackendAddr(1), testenv.VIP, testenv.BackendAddr(2))
	startInLB(t, env, cfg, Options{})
	s := testenv.Summarize(env.Clients[0].Drive(context.Background(), testenv.VIP, []int{80, 5000, 80}, 1))
	if s.Failed != 0 || len(s.Mixed) != 0 || s.PerBackend["backend2"] != 0 {
		t.Fatalf("port-0 service: %d failed (%v), mixed %v, spread %s", s.Failed, s.Errors, s.Mixed, s.Spread())
	}
	// Port 8080 belongs to the admin service, whose only server is backend2.
	if a := testenv.Summarize(env.Clients[0].Drive(context.Background(), testenv.VIP, []int{8080}, 1)); a.PerBackend["backend2"] != 12 {
		t.Errorf("port 8080 went to %s, want the admin service's backend2", a.Spread())
	}
}

// Mark services need no sysctl: with net.ipv4.tcp_fwmark_accept 0 or 1
// the service is found by the connection's original destination, and
// tether leaves the sysctl as it found it.
func TestMarkServicesNeedNoSysctl(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 4, Backends: 1, Label: "sysctl"})
	if _, err := env.Backends[0].ServeName(80); err != nil {
		t.Fatal(err)
	}
	const path = "/proc/sys/net/ipv4/tcp_fwmark_accept"
	read := func() string {
		var b []byte
		env.LB.Do(func() (err error) { b, err = os.ReadFile(path); return })
		return strings.TrimSpace(string(b))
	}
	for _, v := range []string{"0", "1"} {
		if err := env.LB.Do(func() error { return os.WriteFile(path, []byte(v), 0o644) }); err != nil {
			t.Fatal(err)
		}
		_, stop := startInLB(t, env, fmt.Sprintf("marks:\n  - name: web\n    mark: 3\n    addresses: [%s]\n    ports: [80]\nservices:\n  - name: web\n    fwmark: 3\n    servers: [{address: %s}]\n", testenv.VIP, testenv.BackendAddr(0)), Options{})
		if s := testenv.Summarize(env.Clients[0].Drive(context.Background(), testenv.VIP, []int{80}, 1)); s.Failed != 0 {
			t.Errorf("tcp_fwmark_accept %s: %d failed: %v", v, s.Failed, s.Errors)
		}
		if got := read(); got != v {
			t.Errorf("tether changed tcp_fwmark_accept from %s to %s", v, got)
		}
		stop()
		// A stop removes tether's table.
		tables, _ := execIn(env.LB, "nft", "list", "tables")
		if strings.Contains(tables, "tether") {
			t.Errorf("after stop the lb still has %q", tables)
		}
	}
}

// Without the table owner flag (a kernel that lacks it; forced here), a
// tether that dies leaves its table; the next start replaces it and serves.
func TestStaleTableWithoutOwnerFlag(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 4, Backends: 1, Label: "stale"})
	if _, err := env.Backends[0].ServeName(80); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("marks:\n  - name: web\n    mark: 3\n    addresses: [%s]\n    ports: [80]\nservices:\n  - name: web\n    fwmark: 3\n    servers: [{address: %s}]\n", testenv.VIP, testenv.BackendAddr(0))
	var logs bytes.Buffer
	first := New(mustConfig(t, cfg), Options{Do: env.LB.Do})
	first.noTableOwner = true
	if err := env.LB.Do(first.Start); err != nil {
		t.Fatal(err)
	}
	// "Dies": its sockets close, nothing is cleaned up.
	first.closeMarkListeners()
	first.tp.close()
	first.tp.nft.CloseLasting()
	tables, _ := execIn(env.LB, "nft", "list", "tables")
	if !strings.Contains(tables, "inet tether") {
		t.Fatalf("without the owner flag the table should outlive its process: %q", tables)
	}
	second := New(mustConfig(t, cfg), Options{Do: env.LB.Do, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	second.noTableOwner = true
	if err := env.LB.Do(second.Start); err != nil {
		t.Fatal(err)
	}
	defer env.LB.Do(func() error { return second.Shutdown(context.Background()) })
	if !strings.Contains(logs.String(), "removing the table inet tether an earlier tether left") {
		t.Errorf("no log line about the stale table:\n%s", logs.String())
	}
	if s := testenv.Summarize(env.Clients[0].Drive(context.Background(), testenv.VIP, []int{80}, 1)); s.Failed != 0 {
		t.Errorf("after replacing the stale table: %v", s.Errors)
	}
}

// One mark over TCP and UDP 443 (HTTPS and HTTP/3): each client connects
// TCP, then sends UDP, then connects TCP again, and never sees two
// servers; replies to UDP come from the VIP:443 it sent to. Without
// persistence clients mix (the control). In the transparent proxy and in
// the director alike: the director's UDP flows, live.
func TestPersistenceAcrossTCPAndUDP(t *testing.T) {
	for _, mode := range []string{"proxy", "director"} {
		t.Run(mode, func(t *testing.T) { persistenceAcrossTCPAndUDP(t, mode) })
	}
}

func persistenceAcrossTCPAndUDP(t *testing.T, mode string) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 60, Backends: 3, Label: "x" + mode[:3]})
	for _, b := range env.Backends {
		if _, err := b.ServeName(443); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ServeUDP(443); err != nil {
			t.Fatal(err)
		}
	}
	cfg := func(persistence string) string {
		return fmt.Sprintf("mode: "+mode+"\nmarks:\n  - name: https\n    mark: 0x443\n    protocol: both\n    addresses: [%s]\n    ports: [443]\nservices:\n  - name: https\n    fwmark: 0x443\n    scheduler: rr\n%s    servers:\n      - address: %s\n      - address: %s\n      - address: %s\n",
			testenv.VIP, persistence, testenv.BackendAddr(0), testenv.BackendAddr(1), testenv.BackendAddr(2))
	}
	vip := netip.AddrPortFrom(testenv.VIP, 443)
	run := func(persistence string) (mixed int) {
		_, stop := startInLB(t, env, cfg(persistence), Options{})
		defer stop()
		client := env.Clients[0]
		for _, src := range client.Addrs {
			var seen []string
			for _, proto := range []string{"tcp", "udp", "tcp"} {
				c, err := client.Dial(context.Background(), proto, src, vip.String())
				if err != nil {
					t.Fatalf("%s from %s: %v", proto, src, err)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if proto == "udp" {
					if _, err := c.Write([]byte("who?")); err != nil {
						t.Fatal(err)
					}
				}
				// The UDP socket is connected to VIP:443, so the kernel
				// hands it only replies that come from VIP:443.
				buf := make([]byte, 64)
				n, err := c.Read(buf)
				c.Close()
				if err != nil {
					t.Fatalf("%s from %s: %v", proto, src, err)
				}
				seen = append(seen, strings.TrimSpace(string(buf[:n])))
			}
			if seen[0] != seen[1] || seen[1] != seen[2] {
				mixed++
			}
		}
		return mixed
	}
	if m := run("    persistence: {timeout: 60s}\n"); m != 0 {
		t.Errorf("%d of 60 clients saw two servers across TCP and UDP", m)
	}
	if m := run(""); m == 0 {
		t.Errorf("without persistence no client mixed: the test cannot tell")
	}
}

// Reloads of the policy routing: a second class adds its rule and keeps
// the first; a new priority moves every rule; dropping tproxy_ingress
// removes them; the non-local VIP answers whenever rules are wanted.
func TestPolicyRoutingReloads(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 4, Backends: 1, Label: "rrel"})
	if _, err := env.Backends[0].ServeName(80); err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr("198.19.128.10") // routed to the lb, not on it
	cfg := func(routing string, marks ...int) string {
		var b strings.Builder
		b.WriteString(routing + "marks:\n")
		for _, m := range marks {
			fmt.Fprintf(&b, "  - {name: m%d, mark: %d, addresses: [%s], ports: [%d]}\n", m, m, vip, 80+m)
		}
		b.WriteString("services:\n")
		for _, m := range marks {
			fmt.Fprintf(&b, "  - {name: s%d, fwmark: %d, servers: [{address: \"%s:80\"}]}\n", m, m, testenv.BackendAddr(0))
		}
		return b.String()
	}
	rules := func() string {
		out, _ := execIn(env.LB, "ip", "rule")
		return out
	}
	p, _ := startInLB(t, env, cfg("tproxy_ingress: [br-c]\n", 1), Options{})
	for i, step := range []struct {
		cfg        string
		want, gone []string
		answers    bool
	}{
		{cfg("tproxy_ingress: [br-c]\n", 1, 2), []string{"1000:\tfrom all fwmark 0x1 iif br-c lookup 100", "1000:\tfrom all fwmark 0x2 iif br-c lookup 100"}, nil, true},
		{cfg("tproxy_ingress: [br-c]\ntproxy_rule_priority: 900\n", 1, 2), []string{"900:\tfrom all fwmark 0x1 iif br-c lookup 100", "900:\tfrom all fwmark 0x2 iif br-c lookup 100"}, []string{"1000:"}, true},
		{cfg("", 1, 2), nil, []string{"lookup 100"}, false},
	} {
		if err := env.LB.Do(func() error { return p.Reload(mustConfig(t, step.cfg)) }); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		r := rules()
		checkHas(t, fmt.Sprintf("step %d: ip rule", i), r, step.want, step.gone)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s := testenv.Summarize(env.Clients[0].Drive(ctx, vip, []int{81, 82}, 1))
		cancel()
		if answers := s.Failed == 0; answers != step.answers {
			t.Errorf("step %d: %d of %d connections failed; want the VIP answering: %v", i, s.Failed, s.Visits, step.answers)
		}
	}
}

// A tproxy_port someone already holds is an error that says so; inside
// the ephemeral port range it also says why that can happen by chance.
func TestTProxyPortInUse(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Backends: 1, Label: "tpuse"})
	ln, err := env.LB.Listen("tcp4", "0.0.0.0:50080") // in 32768-60999
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := New(mustConfig(t, fmt.Sprintf("tproxy_port: 50080\nmarks:\n  - {name: web, mark: 1, addresses: [%s], ports: [80]}\nservices:\n  - {name: web, fwmark: 1, servers: [{address: %s}]}\n",
		testenv.VIP, testenv.BackendAddr(0))), Options{Do: env.LB.Do})
	err = env.LB.Do(p.Start)
	if err == nil {
		env.LB.Do(func() error { return p.Shutdown(context.Background()) })
		t.Fatal("started on a port in use")
	}
	for _, want := range []string{"address already in use", "tproxy_port 50080 is in net.ipv4.ip_local_port_range"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}
