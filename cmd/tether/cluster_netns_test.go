package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherlb/tether/admin"
	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/testenv"
	"github.com/vishvananda/netlink"
)

// Three tether instances behind an ECMP router (testenv's Balancers), one
// cluster, a round-robin scheduler that would send each new client
// somewhere else on each instance, 200 client addresses whose connections
// the router spreads over the instances by their ports:
//   - once their first connections' templates have spread, every client
//     reaches one backend whichever instance its connections land on;
//   - one instance killed (and taken out of the route): its clients land
//     on the others and keep their backends;
//   - a new instance joins: it holds every template the moment it says
//     ready, and with it back in the route no client moves;
//   - a partition heals: both sides' templates converge to one server per
//     client;
//   - a server set down on one instance is down on all.
//
// For the socket proxy and the director (masquerading, as the backends
// answer the instance that NATed them).
func TestClusterECMP(t *testing.T) {
	for _, mode := range []string{"proxy", "director"} {
		t.Run(mode, func(t *testing.T) { clusterECMP(t, mode) })
	}
}

// lbInstance is tether running in one balancer host.
type lbInstance struct {
	cmd  *exec.Cmd
	logs *syncBuffer
	api  *admin.Client
	sock string
}

func clusterECMP(t *testing.T, mode string) {
	const addrs = 100
	env := testenv.Start(t, testenv.Spec{Clients: 2, AddrsPerClient: addrs, Backends: 3, Balancers: 3, Label: "cl" + mode[:3]})
	for _, b := range env.Backends {
		if _, err := b.ServeName(80); err != nil {
			t.Fatal(err)
		}
	}
	needTool(t, "nft") // the director's tables, and the partition
	dir := t.TempDir()
	var join []string
	for i := range env.Balancers {
		join = append(join, fmt.Sprintf("%s:7946", testenv.BalancerAddr(i)))
	}
	start := func(i int) *lbInstance {
		t.Helper()
		sock := filepath.Join(dir, fmt.Sprintf("admin%d-%d.sock", i, time.Now().UnixNano()))
		cfg := fmt.Sprintf(`mode: %s
director: {masquerade: true}
admin: {socket: %s}
cluster:
  name: lb%d
  bind: %s:7946
  join: [%s]
  join_timeout: 5s
services:
  - name: web
    listen: %s:80
    scheduler: rr
    persistence: {timeout: 300s}
    servers: [{address: %s:80}, {address: %s:80}, {address: %s:80}]
`, mode, sock, i, testenv.BalancerAddr(i), strings.Join(join, ", "), testenv.VIP,
			testenv.BackendAddr(0), testenv.BackendAddr(1), testenv.BackendAddr(2))
		return runIn(t, env.Balancers[i], filepath.Join(dir, fmt.Sprintf("lb%d.yaml", i)), sock, cfg)
	}
	// ready waits for the instance's /readyz and returns the templates it
	// held then.
	ready := func(in *lbInstance) int {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := in.api.Ready(ctx)
			if err == nil {
				ts, err := in.api.Templates(ctx, api.TemplateFilter{})
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				return len(ts)
			}
			cancel()
			if time.Now().After(deadline) {
				t.Fatalf("instance never ready (%v):\n%s", err, in.logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	lbs := make([]*lbInstance, 3)
	for i := range lbs {
		lbs[i] = start(i)
	}
	for _, in := range lbs {
		ready(in)
	}
	eventually(t, "three members", func() error {
		st, err := lbs[0].api.Cluster(context.Background())
		if err != nil || len(st.Members) != 3 {
			return fmt.Errorf("%+v, %v", st, err)
		}
		return nil
	})
	ctx := context.Background()
	drive := func(rounds int) testenv.Summary {
		var visits []testenv.Visit
		for _, c := range env.Clients {
			visits = append(visits, c.Drive(ctx, testenv.VIP, []int{80}, rounds)...)
		}
		return testenv.Summarize(visits)
	}
	templates := func(in *lbInstance) int {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		ts, err := in.api.Templates(ctx, api.TemplateFilter{})
		if err != nil {
			return -1
		}
		return len(ts)
	}
	spread := func(ins ...*lbInstance) {
		t.Helper()
		eventually(t, "templates on every instance", func() error {
			for i, in := range ins {
				if n := templates(in); n != 2*addrs {
					return fmt.Errorf("instance %d holds %d templates, want %d", i, n, 2*addrs)
				}
			}
			return nil
		})
	}

	// Each client's first connection binds it on one instance.
	first := drive(1)
	if first.Failed != 0 {
		t.Fatalf("first connections: %d failed: %v\n%s", first.Failed, first.Errors, lbs[0].logs.String())
	}
	home := map[netip.Addr]string{}
	for c, seen := range first.Seen {
		home[c] = seen[0]
	}
	spread(lbs...)
	check := func(what string, s testenv.Summary) {
		t.Helper()
		if s.Failed != 0 || len(s.Mixed) != 0 {
			t.Fatalf("%s: %d of %d failed (%v), %d clients saw two backends", what, s.Failed, s.Visits, s.Errors, len(s.Mixed))
		}
		moved := 0
		for c, seen := range s.Seen {
			if seen[0] != home[c] {
				moved++
			}
		}
		if moved != 0 {
			t.Fatalf("%s: %d clients moved off their first backend", what, moved)
		}
	}
	check("all three instances", drive(4))

	// What an operator sees: tether ls and tether cluster members.
	for _, args := range [][]string{{"ls"}, {"cluster", "members"}} {
		cmd := exec.Command(os.Args[0], append(args, "--admin", lbs[0].sock)...)
		cmd.Env = append(os.Environ(), "TETHER_TEST_MAIN=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("tether %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		for _, want := range []string{"Cluster: 3 instances, ready", "lb0 (this one)", "lb1", "lb2", "alive"} {
			if !strings.Contains(string(out), want) {
				t.Fatalf("tether %s does not say %q:\n%s", strings.Join(args, " "), want, out)
			}
		}
	}

	// One instance dies; the router stops sending it connections (as a
	// routing protocol would withdraw it).
	syscall.Kill(lbs[2].cmd.Process.Pid, syscall.SIGKILL)
	lbs[2].cmd.Wait()
	if err := env.RouteToBalancers(2); err != nil {
		t.Fatal(err)
	}
	check("one instance killed", drive(3))

	// A new instance in its place joins with an empty table; the moment
	// it says ready it holds every template.
	lbs[2] = start(2)
	if n := ready(lbs[2]); n != 2*addrs {
		t.Fatalf("the new instance said ready holding %d templates, want %d", n, 2*addrs)
	}
	if err := env.RouteToBalancers(3); err != nil {
		t.Fatal(err)
	}
	check("the new instance in the route", drive(3))

	// A partition: lb0 loses the gossip port, long enough that each side
	// declares the other dead. Both sides forget every client (affinity
	// rm reaches its own side only) and bind them again, each its own
	// way; once the partition heals, every instance holds one server per
	// client, the same everywhere, and no client reaches two backends.
	rules := filepath.Join(dir, "partition.nft")
	os.WriteFile(rules, []byte(partitionRules), 0o600)
	if out := nftIn(t, env.Balancers[0], "-f", rules); out != "" {
		t.Fatalf("nft: %s", out)
	}
	members := func(in *lbInstance, want int) func() error {
		return func() error {
			st, err := in.api.Cluster(context.Background())
			if err != nil || len(st.Members) != want {
				return fmt.Errorf("%d members, want %d (%v)", len(st.Members), want, err)
			}
			return nil
		}
	}
	slowly(t, "lb0 alone", members(lbs[0], 1))
	slowly(t, "lb1 without lb0", members(lbs[1], 2))
	for _, in := range lbs[:2] {
		if _, err := in.api.RemoveTemplates(ctx, api.TemplateFilter{}, true); err != nil {
			t.Fatal(err)
		}
	}
	if s := drive(2); s.Failed != 0 {
		t.Fatalf("during the partition: %d failed: %v", s.Failed, s.Errors)
	}
	nftIn(t, env.Balancers[0], "delete", "table", "inet", "partition")
	slowly(t, "lb0 back", members(lbs[0], 3))
	slowly(t, "one server per client everywhere", func() error {
		var first map[string]string
		for i, in := range lbs {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			ts, err := in.api.Templates(ctx, api.TemplateFilter{})
			cancel()
			if err != nil {
				return err
			}
			got := map[string]string{}
			for _, tm := range ts {
				got[tm.Client] = tm.Server
			}
			if len(got) != 2*addrs {
				return fmt.Errorf("lb%d holds %d templates, want %d\n%s", i, len(got), 2*addrs, in.logs.String())
			}
			if first == nil {
				first = got
				continue
			}
			for c, srv := range got {
				if first[c] != srv {
					return fmt.Errorf("client %s: lb0 says %s, lb%d %s", c, first[c], i, srv)
				}
			}
		}
		return nil
	})
	// The director's kernel maps follow their tables a batch later (the
	// mirror writes at most every 20 ms): a drive right after the tables
	// agree may meet an element not yet rewritten.
	eventually(t, "no client on two backends", func() error {
		if s := drive(3); s.Failed != 0 || len(s.Mixed) != 0 {
			return fmt.Errorf("after the partition healed: %d failed (%v), %d clients saw two backends", s.Failed, s.Errors, len(s.Mixed))
		}
		return nil
	})

	// An operator takes a server down on one instance: every instance
	// takes it down.
	down := netip.AddrPortFrom(testenv.BackendAddr(0), 80).String()
	if err := lbs[1].api.SetServer(ctx, api.ServerRequest{Service: "web", Server: down, ServerChange: api.ServerChange{Down: true}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the server down everywhere", func() error {
		for i, in := range lbs {
			svcs, err := in.api.Services(context.Background())
			if err != nil {
				return err
			}
			for _, srv := range svcs[0].Servers {
				if srv.Address == down && srv.State != "maint" {
					return fmt.Errorf("lb%d: %s is %s", i, down, srv.State)
				}
			}
		}
		return nil
	})
}

// partitionRules cut a host off the gossip port, both ways.
const partitionRules = `table inet partition {
	chain in {
		type filter hook input priority 0; policy accept;
		tcp dport 7946 drop
		udp dport 7946 drop
		tcp sport 7946 drop
		udp sport 7946 drop
	}
	chain out {
		type filter hook output priority 0; policy accept;
		tcp dport 7946 drop
		udp dport 7946 drop
		tcp sport 7946 drop
		udp sport 7946 drop
	}
}
`

// slowly is eventually with room for memberlist's failure detection and
// its rejoin (seconds each).
func slowly(t *testing.T, what string, f func() error) {
	t.Helper()
	within(t, 40*time.Second, what, f)
}

// runIn starts tether run in host h on cfg, written to path; sock is the
// admin socket cfg names.
func runIn(t *testing.T, h *testenv.Host, path, sock, cfg string) *lbInstance {
	t.Helper()
	os.WriteFile(path, []byte(cfg), 0o600)
	in := &lbInstance{logs: &syncBuffer{}, api: admin.NewClient(sock, "", ""), sock: sock}
	in.cmd = exec.Command(os.Args[0], "run", "--config", path)
	in.cmd.Env = append(os.Environ(), "TETHER_TEST_MAIN=1")
	in.cmd.Stdout, in.cmd.Stderr = in.logs, in.logs
	if err := h.Start(in.cmd); err != nil {
		t.Fatal(err)
	}
	return in
}

// Two tether instances behind a VIP that keepalived moves (VRRP), as the
// README's example: the master balances; when its tether dies, its
// keepalived's check of /readyz fails, the VIP moves to the backup, and
// every client keeps its backend there, because the backup already has
// every template.
func TestClusterVRRP(t *testing.T) {
	keepalived := needTool(t, "keepalived")
	needTool(t, "curl")
	const addrs = 50
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: addrs, Backends: 3, Balancers: 2, Label: "vrrp"})
	for _, b := range env.Backends {
		if _, err := b.ServeName(80); err != nil {
			t.Fatal(err)
		}
	}
	// The router finds the VIP on the balancers' network (ARP), not by a
	// multipath route, and the balancers hold it only when keepalived
	// gives it to them.
	err := env.LB.Do(func() error {
		br, err := netlink.LinkByName("br-l")
		if err != nil {
			return err
		}
		return netlink.RouteReplace(&netlink.Route{LinkIndex: br.Attrs().Index, Dst: &net.IPNet{IP: testenv.VIP.AsSlice(), Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK})
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var lbs []*lbInstance
	for i, h := range env.Balancers {
		if err := h.Do(func() error {
			lo, err := netlink.LinkByName("lo")
			if err != nil {
				return err
			}
			return netlink.AddrDel(lo, &netlink.Addr{IPNet: &net.IPNet{IP: testenv.VIP.AsSlice(), Mask: net.CIDRMask(32, 32)}})
		}); err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(dir, fmt.Sprintf("admin%d.sock", i))
		cfg := fmt.Sprintf(`admin: {socket: %s}
metrics: {listen: 127.0.0.1:9105}
cluster:
  name: lb%d
  bind: %s:7946
  join: [%s:7946, %s:7946]
services:
  - name: web
    listen: 0.0.0.0:80
    scheduler: rr
    persistence: {timeout: 300s}
    servers: [{address: %s:80}, {address: %s:80}, {address: %s:80}]
`, sock, i, testenv.BalancerAddr(i), testenv.BalancerAddr(0), testenv.BalancerAddr(1),
			testenv.BackendAddr(0), testenv.BackendAddr(1), testenv.BackendAddr(2))
		lbs = append(lbs, runIn(t, h, filepath.Join(dir, fmt.Sprintf("lb%d.yaml", i)), sock, cfg))
	}
	for i, h := range env.Balancers {
		l := lbs[i]
		eventually(t, "tether ready", func() error { return l.api.Ready(context.Background()) })
		// The README's keepalived.conf, with this balancer's priority and
		// its own files.
		ex, err := os.ReadFile("../../examples/cluster/keepalived.conf")
		if err != nil {
			t.Fatal(err)
		}
		conf := strings.ReplaceAll(string(ex), "priority 150", fmt.Sprintf("priority %d", 150-50*i))
		conf = strings.ReplaceAll(conf, "router_id tether_lb1", fmt.Sprintf("router_id tether_lb%d", i))
		cpath := filepath.Join(dir, fmt.Sprintf("keepalived%d.conf", i))
		os.WriteFile(cpath, []byte(conf), 0o600)
		ka := exec.Command(keepalived, "--dont-fork", "--log-console", "--vrrp", "--use-file", cpath,
			"--pid", filepath.Join(dir, fmt.Sprintf("ka%d.pid", i)), "--vrrp_pid", filepath.Join(dir, fmt.Sprintf("vrrp%d.pid", i)))
		ka.Stdout, ka.Stderr = l.logs, l.logs
		if err := h.Start(ka); err != nil {
			t.Fatal(err)
		}
	}
	holds := func(h *testenv.Host) bool {
		held := false
		h.Do(func() error {
			eth, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			as, _ := netlink.AddrList(eth, netlink.FAMILY_V4)
			for _, a := range as {
				held = held || a.IP.Equal(testenv.VIP.AsSlice())
			}
			return nil
		})
		return held
	}
	within(t, 30*time.Second, "the VIP on balancer0", func() error {
		if !holds(env.Balancers[0]) || holds(env.Balancers[1]) {
			return fmt.Errorf("balancer0 %v, balancer1 %v", holds(env.Balancers[0]), holds(env.Balancers[1]))
		}
		return nil
	})
	ctx := context.Background()
	first := testenv.Summarize(env.Clients[0].Drive(ctx, testenv.VIP, []int{80}, 2))
	if first.Failed != 0 || len(first.Mixed) != 0 {
		t.Fatalf("through balancer0: %d failed (%v), %d mixed\n%s", first.Failed, first.Errors, len(first.Mixed), lbs[0].logs.String())
	}
	eventually(t, "templates on balancer1", func() error {
		ts, err := lbs[1].api.Templates(ctx, api.TemplateFilter{})
		if err != nil || len(ts) != addrs {
			return fmt.Errorf("%d templates (%v)", len(ts), err)
		}
		return nil
	})
	// balancer0's tether dies: its readiness check fails, the VIP moves.
	syscall.Kill(lbs[0].cmd.Process.Pid, syscall.SIGKILL)
	lbs[0].cmd.Wait()
	within(t, 30*time.Second, "the VIP on balancer1", func() error {
		if holds(env.Balancers[0]) || !holds(env.Balancers[1]) {
			return fmt.Errorf("balancer0 %v, balancer1 %v", holds(env.Balancers[0]), holds(env.Balancers[1]))
		}
		return nil
	})
	var after testenv.Summary
	within(t, 10*time.Second, "clients through balancer1", func() error {
		after = testenv.Summarize(env.Clients[0].Drive(ctx, testenv.VIP, []int{80}, 1))
		if after.Failed != 0 {
			return fmt.Errorf("%d failed: %v", after.Failed, after.Errors)
		}
		return nil
	})
	moved := 0
	for c, seen := range after.Seen {
		if seen[0] != first.Seen[c][0] {
			moved++
		}
	}
	if moved != 0 {
		t.Fatalf("after the failover %d of %d clients moved to another backend\n%s", moved, addrs, lbs[1].logs.String())
	}
}
