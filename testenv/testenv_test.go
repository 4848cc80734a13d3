package testenv

import (
	"context"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// The topology comes up, every host reaches the ones it should through the
// load balancer, and Close leaves no namespace.
func TestTopology(t *testing.T) {
	Require(t)
	e, err := New(Spec{Clients: 2, AddrsPerClient: 5, Backends: 3, Label: "topo"})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			e.Close()
		}
	}()
	for _, b := range e.Backends {
		if _, err := b.ServeName(8080); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.LB.ServeName(9000); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Every client source address reaches the VIP on the load balancer.
	for _, c := range e.Clients {
		s := Summarize(c.Drive(ctx, VIP, []int{9000}, 1))
		if s.Failed != 0 || s.PerBackend["lb"] != 5 {
			t.Fatalf("%s to the VIP: %+v", c.Name, s)
		}
	}
	// The load balancer reaches every backend.
	for i, b := range e.Backends {
		if got := Summarize(e.LB.Drive(ctx, BackendAddr(i), []int{8080}, 1)); got.PerBackend[b.Name] != 3 {
			t.Fatalf("lb to %s: %+v", b.Name, got)
		}
	}
	// A backend reaches a client through its gateway, the load balancer:
	// the return path kernel NAT needs.
	if _, err := e.Clients[1].ServeName(7000); err != nil {
		t.Fatal(err)
	}
	c, err := e.Backends[0].Dial(ctx, "tcp", netip.Addr{}, netip.AddrPortFrom(e.Clients[1].Addr(3), 7000).String())
	if err != nil {
		t.Fatalf("backend0 to client1 through the lb: %v", err)
	}
	c.Close()
	if e.Clients[1].Addr(0) != ClientAddr(5) {
		t.Errorf("client1's first address %s, want %s", e.Clients[1].Addr(0), ClientAddr(5))
	}
	names := []string{}
	for _, h := range e.Hosts() {
		names = append(names, h.NS)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	for _, n := range names {
		if n == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join("/run/netns", n)); err == nil {
			t.Errorf("namespace %s left behind", n)
		}
	}
}

func TestStartedProcessRunsInHostAndIsStopped(t *testing.T) {
	e := Start(t, Spec{Backends: 1, Label: "proc"})
	out, err := os.CreateTemp(t.TempDir(), "addrs")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "cat /proc/net/fib_trie; sleep 60")
	cmd.Stdout = out
	if err := e.Backends[0].Start(cmd); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	// The child sees the backend's address, so it runs in the backend.
	deadlineRead := func() string {
		for range 200 {
			b, _ := os.ReadFile(out.Name())
			if strings.Contains(string(b), "198.19.0.11") {
				return string(b)
			}
			exec.Command("sleep", "0.01").Run()
		}
		b, _ := os.ReadFile(out.Name())
		return string(b)
	}
	if s := deadlineRead(); !strings.Contains(s, "198.19.0.11") {
		t.Fatalf("process in backend0 does not see 198.19.0.11:\n%.500s", s)
	}
	e.Close()
	if err := exec.Command("kill", "-0", strconv.Itoa(pid)).Run(); err == nil {
		t.Errorf("process %d still runs after Close", pid)
	}
}

// A test that panics half-way still removes its namespaces: run one in a
// child process and look for what it left.
func TestPanicStillCleansUp(t *testing.T) {
	if os.Getenv("TESTENV_PANIC_HELPER") == "1" {
		Start(t, Spec{Backends: 1, Label: "panic"})
		panic("half-way")
	}
	Require(t)
	if Missing() != "" || inUserNS() {
		t.Skip("needs named namespaces (root) to look for leftovers")
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestPanicStillCleansUp$")
	cmd.Env = append(os.Environ(), "TESTENV_PANIC_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "half-way") {
		t.Fatalf("helper did not panic: %v\n%s", err, out)
	}
	leftovers, _ := filepath.Glob("/run/netns/" + Prefix + strconv.Itoa(cmd.Process.Pid) + "-*")
	if len(leftovers) != 0 {
		t.Errorf("a panicking test left %v", leftovers)
	}
}

func TestClientAddrsGroup(t *testing.T) {
	g := map[netip.Prefix]int{}
	for i := range 50 {
		p, _ := ClientAddr(i).Prefix(24)
		g[p]++
	}
	if len(g) != 13 {
		t.Errorf("50 sources span %d /24s, want 13 (4 to a /24)", len(g))
	}
}

// The ECMP site: the router spreads one client's connections over the
// balancers (each holds the VIP), and a balancer reaches every backend.
func TestECMPTopology(t *testing.T) {
	Require(t)
	e, err := New(Spec{Clients: 1, AddrsPerClient: 4, Backends: 3, Balancers: 3, Label: "ecmp"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, b := range e.Balancers {
		if _, err := b.ServeName(9000); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range e.Backends {
		if _, err := b.ServeName(8080); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	s := Summarize(e.Clients[0].Drive(ctx, VIP, []int{9000}, 30))
	if s.Failed != 0 || len(s.PerBackend) != 3 {
		t.Fatalf("120 connections to the VIP reached %v (failed %d: %v), want all 3 balancers", s.PerBackend, s.Failed, s.Errors)
	}
	for _, seen := range s.Seen {
		if len(seen) < 2 {
			t.Fatalf("a client's connections all went to %v: the router does not hash ports", seen)
		}
	}
	for i, bal := range e.Balancers {
		for j, b := range e.Backends {
			if got := Summarize(bal.Drive(ctx, BackendAddr(j), []int{8080}, 1)); got.PerBackend[b.Name] != 2 {
				t.Fatalf("balancer%d to %s: %+v", i, b.Name, got)
			}
		}
	}
}

// More client addresses than the kernel's neighbour table holds (1024 for
// all namespaces) reach a backend through the load balancer from routed
// sources, which leave the balancer no neighbour entry of their own; the
// prefix is given once.
func TestRoutedSources(t *testing.T) {
	e := Start(t, Spec{Backends: 1, Label: "routed"})
	if _, err := e.Backends[0].ServeName(8080); err != nil {
		t.Fatal(err)
	}
	if _, err := e.RoutedSources(e.Clients[0], 0); err == nil {
		t.Error("no error for 0 routed sources")
	}
	srcs, err := e.RoutedSources(e.Clients[0], 1100)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.RoutedSources(e.Clients[0], 1); err == nil {
		t.Error("routed sources given twice")
	}
	ctx := context.Background()
	to := netip.AddrPortFrom(BackendAddr(0), 8080).String()
	for _, src := range srcs {
		if !RoutedPrefix.Contains(src) {
			t.Fatalf("source %s outside %s", src, RoutedPrefix)
		}
		c, err := e.Clients[0].Dial(ctx, "tcp", src, to)
		if err != nil {
			t.Fatalf("from %s: %v", src, err)
		}
		name := make([]byte, len("backend0\n"))
		_, err = io.ReadFull(c, name)
		c.Close()
		if err != nil || string(name) != "backend0\n" {
			t.Fatalf("from %s: %q, %v", src, name, err)
		}
	}
	var neigh []netlink.Neigh
	if err := e.LB.Do(func() (err error) {
		neigh, err = netlink.NeighList(0, netlink.FAMILY_V4)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// An ARP request the client sends from a routed source teaches the
	// balancer that one address; connections add none.
	routed := 0
	for _, n := range neigh {
		if a, ok := netip.AddrFromSlice(n.IP); ok && RoutedPrefix.Contains(a.Unmap()) {
			routed++
		}
	}
	if routed > 2 {
		t.Errorf("%d neighbour entries of routed sources on the load balancer after %d of them, want at most 2", routed, len(srcs))
	}
}
