package proxy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/testenv"
)

// The marks test of the socket path, in director mode: 200 clients go to
// 80, 443 and 80 again under one mark, and none sees two backends; without
// persistence clients mix, so the test can tell.
func TestDirectorPersistenceAcrossPorts(t *testing.T) {
	markPersistenceAcrossPorts(t, "director", "dmark", "")
}

// The same config in socket-proxy and director mode sends each client to
// the same server: the same templates and the same scheduler decide.
func TestDirectorAgreesWithSocketProxy(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 2, AddrsPerClient: 40, Backends: 3, Label: "agree"})
	serveNames(t, env, 8080)
	servers := serverLines(env, 8080)
	cfg := fmt.Sprintf("services:\n  - name: web\n    listen: %s:80\n    scheduler: mh\n    persistence: {netmask: 255.255.255.0}\n    servers:\n%s", testenv.VIP, servers)
	served := func(mode string) map[netip.Addr][]string {
		_, stop := startInLB(t, env, "mode: "+mode+"\n"+cfg, Options{})
		defer stop()
		var visits []testenv.Visit
		for _, c := range env.Clients {
			visits = append(visits, c.Drive(context.Background(), testenv.VIP, []int{80}, 2)...)
		}
		s := testenv.Summarize(visits)
		if s.Failed != 0 || len(s.Mixed) != 0 {
			t.Fatalf("%s: %d failed, %d mixed: %v", mode, s.Failed, len(s.Mixed), s.Errors)
		}
		return s.Seen
	}
	proxy, director := served("proxy"), served("director")
	if len(proxy) != 80 || len(director) != 80 {
		t.Fatalf("clients seen: proxy %d, director %d, want 80", len(proxy), len(director))
	}
	backends := map[string]bool{}
	for c, b := range proxy {
		backends[b[0]] = true
		if director[c][0] != b[0] {
			t.Errorf("client %s: proxy sent it to %s, director to %s", c, b[0], director[c][0])
		}
	}
	if len(backends) < 2 {
		t.Errorf("every client went to %v: agreement proves nothing", backends)
	}
}

// A director flow holds its template while its connection is open: a TCP
// connection releases it when it closes (conntrack's update to TIME_WAIT
// or CLOSE, two minutes before conntrack forgets the flow), an open one
// when conntrack forgets it (flushing conntrack, as its timeouts would).
// Either way the templates stay, released, not removed.
func TestDirectorReleasesOnCloseAndDestroy(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 10, Backends: 2, Label: "dstroy"})
	serveNames(t, env, 8080)
	cfg := fmt.Sprintf("mode: director\nservices:\n  - name: web\n    listen: %s:80\n    persistence: {timeout: 300s}\n    servers:\n      - address: %s:8080\n      - address: %s:8080\n",
		testenv.VIP, testenv.BackendAddr(0), testenv.BackendAddr(1))
	p, _ := startInLB(t, env, cfg, Options{})
	active := func() (n int) {
		for _, tp := range p.Table().List(affinity.Filter{}) {
			n += tp.Active
		}
		return n
	}
	// Closed connections: released at their close.
	if s := testenv.Summarize(env.Clients[0].Drive(context.Background(), testenv.VIP, []int{80}, 3)); s.Failed != 0 {
		t.Fatalf("%d failed: %v", s.Failed, s.Errors)
	}
	if !waitFor(5*time.Second, func() bool { return active() == 0 && p.DirectorFlows() == 0 }) {
		t.Fatalf("after 30 closed connections templates hold %d flows, the director %d; want 0 (conntrack keeps them in TIME_WAIT, the connections are over)", active(), p.DirectorFlows())
	}
	// Open connections: held, until conntrack forgets them.
	var open []*testenv.Echo
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for _, src := range env.Clients[0].Addrs {
		c, err := env.Clients[0].DialEcho(context.Background(), src, netip.AddrPortFrom(testenv.VIP, 80))
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	if !waitFor(5*time.Second, func() bool { return active() == 10 && p.DirectorFlows() == 10 }) {
		t.Fatalf("templates hold %d flows, the director %d; want the 10 open ones", active(), p.DirectorFlows())
	}
	flushConntrack(t, env)
	if !waitFor(5*time.Second, func() bool { return active() == 0 && p.DirectorFlows() == 0 }) {
		t.Errorf("after conntrack forgot the flows: templates hold %d, the director %d", active(), p.DirectorFlows())
	}
	if n := len(p.Table().List(affinity.Filter{})); n != 10 {
		t.Errorf("%d templates, want the 10 clients' (released, not removed)", n)
	}
}

// FTP through the director: the kernel's FTP helper rewrites the servers'
// PASV replies and steers the data connections, so vsftpd announces its own
// address (no pasv_address) and clients still cannot reach the servers but
// through the director's NAT (the lb forwards nothing else to them).
func TestDirectorFTP(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		name := "IPv4"
		if v6 {
			name = "IPv6"
		}
		t.Run(name, func(t *testing.T) { directorFTP(t, v6) })
	}
}

// directorFTP is TestDirectorFTP in one address family.
func directorFTP(t *testing.T, v6 bool) {
	label, vip, servers, srcs := "dftp", testenv.VIP.String(), "198.19.0.0/24", func(h *testenv.Host) []netip.Addr { return h.Addrs }
	backend := testenv.BackendAddr
	if v6 {
		label, vip, servers, srcs = "dftp6", `"`+testenv.VIP6.String()+`"`, "2001:2:0:1::/64", func(h *testenv.Host) []netip.Addr { return h.Addrs6 }
		backend = testenv.BackendAddr6
	}
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 30, Backends: 3, Label: label})
	needTools(t, "curl", "vsftpd", "nft")
	file := make([]byte, 256<<10)
	rand.NewChaCha8([32]byte{7}).Read(file)
	for _, b := range env.Backends {
		if err := b.StartFTP(testenv.FTPOptions{Files: map[string][]byte{"data.bin": file}, IPv6: v6}); err != nil {
			t.Fatal(err)
		}
	}
	fam := "ip"
	if v6 {
		fam = "ip6"
	}
	fw := filepath.Join(t.TempDir(), "fw.nft")
	os.WriteFile(fw, []byte(fmt.Sprintf("table inet testfw {\n\tchain gate {\n\t\ttype filter hook forward priority 0;\n\t\tct state new %s daddr %s ct status & dnat == 0 drop\n\t}\n}\n", fam, servers)), 0o644)
	if out, err := execIn(env.LB, "nft", "-f", fw); err != nil {
		t.Fatalf("nft: %v %s", err, out)
	}
	cfg := fmt.Sprintf("mode: director\nmarks:\n  - name: ftp\n    mark: 21\n    addresses: [%s]\n    ports: [21, 30000-30099]\nservices:\n  - name: ftp\n    fwmark: 21\n    scheduler: rr\n    persistence: {timeout: 60s}\n    servers:\n      - address: \"%s\"\n      - address: \"%s\"\n      - address: \"%s\"\n",
		vip, backend(0), backend(1), backend(2))
	_, stop := startInLB(t, env, cfg, Options{})
	defer stop()
	ok, why := ftpDownloads(t, env, srcs(env.Clients[0]), "15", file)
	if ok != len(env.Clients[0].Addrs) {
		t.Errorf("%d of %d downloads intact; first failures: %v", ok, len(env.Clients[0].Addrs), why)
	}
	// The control: straight to a server's own address the forward rule
	// refuses, so the downloads above did go through the director's NAT.
	direct := backend(0).String()
	if v6 {
		direct = "[" + direct + "]"
	}
	if out, err := execIn(env.Clients[0], "curl", "-sS", "-g", "--max-time", "2", "-o", "/dev/null", "ftp://"+direct+"/data.bin"); err == nil {
		t.Errorf("a client reached a server directly (%s): the test cannot tell", out)
	}
}

// A reload that removes a flow's server: with expire_nodest keep the open
// flow runs on to it (conntrack holds its NAT); with reset its conntrack
// entry is deleted, and the flow breaks, as IPVS's expire_nodest_conn.
func TestDirectorExpireNodest(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, Backends: 2, Label: "nodest"})
	serveNames(t, env, 8080)
	cfg := func(mode string, server int) string {
		return fmt.Sprintf("mode: director\ndirector: {expire_nodest: %s}\nservices:\n  - name: echo\n    listen: %s:80\n    servers: [{address: %s:8080}]\n",
			mode, testenv.VIP, testenv.BackendAddr(server))
	}
	for _, mode := range []string{"keep", "reset"} {
		t.Run(mode, func(t *testing.T) {
			p, stop := startInLB(t, env, cfg(mode, 0), Options{})
			defer stop()
			c, err := env.Clients[0].DialEcho(context.Background(), env.Clients[0].Addr(0), netip.AddrPortFrom(testenv.VIP, 80))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.Name != "backend0" {
				t.Fatalf("served by %q, want backend0", c.Name)
			}
			if err := c.Say("before"); err != nil {
				t.Fatal(err)
			}
			if err := env.LB.Do(func() error { return p.Reload(mustConfig(t, cfg(mode, 1))) }); err != nil {
				t.Fatal(err)
			}
			err = c.Say("after")
			if mode == "keep" && err != nil {
				t.Errorf("keep: the open flow to the removed server broke: %v", err)
			}
			if mode == "reset" && err == nil {
				t.Errorf("reset: the open flow to the removed server still works")
			}
		})
	}
}

// When a netfilter hook of the namespace goes (anyone's nft deleting a
// base chain), the kernel drops every queued packet, and the verdict
// tether then sends for one is answered with ENOENT. The queue reader must
// read on: it used to stop, and from then on every new flow was dropped.
// A reload, by contrast, updates tether's table in place, keeps its hooks,
// and flushes nothing: the held packet's verdict is taken.
func TestDirectorQueueAcrossHookChanges(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 4, Backends: 1, Label: "flush"})
	if _, err := env.Backends[0].ServeName(8080); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("mode: director\nservices:\n  - name: web\n    listen: %s:80\n    servers: [{address: \"%s:8080\"}]\n", testenv.VIP, testenv.BackendAddr(0))
	// With a mark service in the socket proxy too, a reload updates the
	// table inet tether as well: in place, or its hook would go.
	withMarks := fmt.Sprintf("marks:\n  - {name: alt, mark: 7, addresses: [%s], ports: [8443]}\n", testenv.VIP) + cfg +
		fmt.Sprintf("  - name: alt\n    mode: proxy\n    fwmark: 7\n    servers: [{address: \"%s:8080\"}]\n", testenv.BackendAddr(0))
	for _, tc := range []struct {
		name      string
		cfg       string
		change    func(p *Proxy, cfg string) error
		wantFlush bool
	}{
		{"foreign nft", cfg, func(*Proxy, string) error {
			// A base chain that comes and goes: its hook is registered
			// and unregistered.
			out, err := execIn(env.LB, "nft", "add table ip other; add chain ip other c { type filter hook prerouting priority 0; }; delete table ip other")
			if err != nil {
				err = fmt.Errorf("%v: %s", err, out)
			}
			return err
		}, true},
		{"reload", cfg, reloadWith, false},
		{"reload with marks", withMarks, reloadWith, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := New(mustConfig(t, tc.cfg), Options{Do: env.LB.Do})
			held, release := make(chan struct{}), make(chan struct{})
			var once, released sync.Once
			p.verdictHook = func() { once.Do(func() { close(held); <-release }) }
			if err := env.LB.Do(p.Start); err != nil {
				t.Fatal(err)
			}
			defer func() {
				// A failure while the packet is held must not leave the
				// hook waiting: Shutdown waits for it.
				released.Do(func() { close(release) })
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				env.LB.Do(func() error { return p.Shutdown(ctx) })
			}()
			first := make(chan error, 1)
			go func() {
				// A flushed first SYN is retransmitted a second later.
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				c, err := env.Clients[0].Dial(ctx, "tcp", env.Clients[0].Addr(0), netip.AddrPortFrom(testenv.VIP, 80).String())
				if err == nil {
					c.Close()
				}
				first <- err
			}()
			<-held
			if err := tc.change(p, tc.cfg); err != nil {
				t.Fatal(err)
			}
			released.Do(func() { close(release) })
			if err := <-first; err != nil {
				t.Fatalf("the connection whose SYN was held: %v", err)
			}
			if s := testenv.Summarize(env.Clients[0].Drive(context.Background(), testenv.VIP, []int{80}, 1)); s.Failed != 0 {
				t.Errorf("afterwards %d of %d new flows failed (%v): the queue reader stopped", s.Failed, s.Visits, s.Errors)
			}
			errs := p.dir.Load().d.Stats().QueueErrors
			if flushed := errs > 0; flushed != tc.wantFlush {
				t.Errorf("queue errors %d (the held packet flushed: %v), want flushed %v", errs, flushed, tc.wantFlush)
			}
		})
	}
}

// reloadWith reloads p, in its host, with cfg.
func reloadWith(p *Proxy, cfg string) error {
	c, err := config.Parse("reload.yaml", []byte(cfg))
	if err != nil {
		return err
	}
	return p.do(func() error { return p.Reload(c) })
}

// Reloads that change the table's shape (a second service with an FTP
// class, masquerade on, then both gone) update it in place: each state
// serves, and the table holds what the config asks for and nothing left
// from before.
func TestDirectorReloadReshapesTable(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 4, Backends: 2, Label: "shape"})
	serveNames(t, env, 8080)
	one := fmt.Sprintf(`mode: director
director: {fail_open: true}
services:
  - name: web
    listen: %s:80
    servers: [{address: "%s:8080"}, {address: "%s:8080"}]
`, testenv.VIP, testenv.BackendAddr(0), testenv.BackendAddr(1))
	two := fmt.Sprintf(`mode: director
director: {fail_open: true, masquerade: true}
marks:
  - {name: ftp, mark: 21, addresses: [%s], ports: [21, 30000-30099]}
services:
  - name: web
    listen: %s:80
    servers: [{address: "%s:8080"}, {address: "%s:8080"}]
  - name: ftp
    fwmark: 21
    servers: [{address: "%s"}]
`, testenv.VIP, testenv.VIP, testenv.BackendAddr(0), testenv.BackendAddr(1), testenv.BackendAddr(1))
	p, _ := startInLB(t, env, one, Options{})
	for i, step := range []struct {
		cfg        string
		want, gone []string
	}{
		{two, []string{"chain onearm", "ct helper ftp", "map fallback0", "map fallback1", "masquerade"}, nil},
		{one, []string{"map fallback0"}, []string{"chain onearm", "ct helper", "fallback1", "masquerade"}},
	} {
		if err := env.LB.Do(func() error { return p.Reload(mustConfig(t, step.cfg)) }); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		out, err := execIn(env.LB, "nft", "list", "table", "ip", "tether")
		if err != nil {
			t.Fatalf("step %d: %v\n%s", i, err, out)
		}
		checkHas(t, fmt.Sprintf("step %d: the table", i), out, step.want, step.gone)
		if s := testenv.Summarize(env.Clients[0].Drive(context.Background(), testenv.VIP, []int{80}, 1)); s.Failed != 0 {
			t.Errorf("step %d: %d of %d flows failed: %v", i, s.Failed, s.Visits, s.Errors)
		}
	}
}

// expire_nodest applies to a server that goes down at run time too (server
// set --down here; a failed health check takes the same path): with reset,
// its open flows' conntrack entries go, so a UDP client that keeps sending
// is moved; with keep, they run on. Only a reload's removal did this before.
func TestDirectorExpireNodestOnDown(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, Backends: 2, Label: "nodown"})
	serveNames(t, env, 8080)
	for _, mode := range []string{"keep", "reset"} {
		t.Run(mode, func(t *testing.T) {
			p, stop := startInLB(t, env, fmt.Sprintf("mode: director\ndirector: {expire_nodest: %s}\nservices:\n  - name: echo\n    listen: %s:80\n    servers: [{address: %s:8080}, {address: %s:8080}]\n",
				mode, testenv.VIP, testenv.BackendAddr(0), testenv.BackendAddr(1)), Options{})
			defer stop()
			c, err := env.Clients[0].DialEcho(context.Background(), env.Clients[0].Addr(0), netip.AddrPortFrom(testenv.VIP, 80))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Say("before"); err != nil {
				t.Fatal(err)
			}
			server := testenv.BackendAddr(0)
			if c.Name == "backend1" {
				server = testenv.BackendAddr(1)
			}
			if err := p.SetServer("echo", netip.AddrPortFrom(server, 8080).String(), api.ServerChange{Down: true}); err != nil {
				t.Fatal(err)
			}
			err = c.Say("after")
			if mode == "keep" && err != nil {
				t.Errorf("keep: the open flow to the server set down broke: %v", err)
			}
			if mode == "reset" && err == nil {
				t.Errorf("reset: the open flow to the server set down still works")
			}
		})
		t.Run(mode+"/udp", func(t *testing.T) { directorExpireNodestUDP(t, env, mode) })
	}
}

// A UDP client that keeps sending from one socket: with reset, the
// datagram after its server is set down reaches the other server; with
// keep, its flow runs on to the old one.
func directorExpireNodestUDP(t *testing.T, env *testenv.Env, mode string) {
	for _, b := range env.Backends {
		srv, err := b.ServeUDP(5353)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
	}
	p, stop := startInLB(t, env, fmt.Sprintf("mode: director\ndirector: {expire_nodest: %s}\nservices:\n  - name: dns\n    listen: %s:53\n    protocol: udp\n    servers: [{address: %s:5353}, {address: %s:5353}]\n",
		mode, testenv.VIP, testenv.BackendAddr(0), testenv.BackendAddr(1)), Options{})
	defer stop()
	c, err := env.Clients[0].Dial(context.Background(), "udp", env.Clients[0].Addr(0), netip.AddrPortFrom(testenv.VIP, 53).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ask := func() string {
		t.Helper()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("who?")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(buf[:n]))
	}
	first := ask()
	server, other := testenv.BackendAddr(0), "backend1"
	if first == "backend1" {
		server, other = testenv.BackendAddr(1), "backend0"
	}
	if err := p.SetServer("dns", netip.AddrPortFrom(server, 5353).String(), api.ServerChange{Down: true}); err != nil {
		t.Fatal(err)
	}
	switch got := ask(); {
	case mode == "keep" && got != first:
		t.Errorf("keep: the flow went from %s to %s when its server was set down", first, got)
	case mode == "reset" && got != other:
		t.Errorf("reset: the flow answered by %s after %s was set down, want %s", got, first, other)
	}
}

// The director applies a service's access lists in the kernel, ahead of
// the queue and the template map: a denied client's SYN (in deny, or
// outside allow) is dropped there and never reaches tether; an allowed one
// is served, and comes back through the template map.
func TestDirectorAccessList(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 3, Backends: 1, Label: "dacl"})
	serveNames(t, env, 8080)
	c := env.Clients[0]
	allow := netip.PrefixFrom(c.Addr(0), 30).Masked() // covers the first addresses
	p, _ := startInLB(t, env, fmt.Sprintf("mode: director\nservices:\n  - name: echo\n    listen: %s:80\n    persistence: {}\n    allow: [%s, %s/32]\n    deny: [%s]\n    servers: [{address: %s:8080}]\n",
		testenv.VIP, allow, c.Addr(0), c.Addr(1), testenv.BackendAddr(0)), Options{})
	if allow.Contains(c.Addr(2)) {
		t.Fatalf("%s is in %s: the test needs it outside", c.Addr(2), allow)
	}
	vip := netip.AddrPortFrom(testenv.VIP, 80)
	for range 2 {
		ok, err := c.DialEcho(context.Background(), c.Addr(0), vip)
		if err != nil {
			t.Fatalf("the allowed client: %v", err)
		}
		ok.Close()
		p.syncKernel() // the kernel may lag tether's table by one write
	}
	for _, a := range []netip.Addr{c.Addr(1), c.Addr(2)} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if denied, err := c.DialEcho(ctx, a, vip); err == nil {
			denied.Close()
			t.Errorf("the denied client %s was served", a)
		}
		cancel()
	}
	if n := aclCounted(t, env, nftables.TableFamilyIPv4, "steer"); n == 0 {
		t.Error("the access-list rules counted no packet")
	}
	if s := p.dir.Load().d.Stats(); s.Denied != 0 || s.Verdicts != 1 {
		t.Errorf("the queue saw %d denied first packets and gave %d verdicts; want 0 (the kernel drops them) and 1 (the allowed client's first flow)", s.Denied, s.Verdicts)
	}
}
