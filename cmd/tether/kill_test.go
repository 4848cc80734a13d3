package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherlb/tether/testenv"
)

// nftIn runs nft in a host and returns its output.
func nftIn(t *testing.T, h *testenv.Host, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command("nft", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := h.Start(cmd); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	return out.String()
}

// needTool is the path of a tool a test runs: a test without it is
// skipped, except in CI, which installs it (.ci/run), where it fails.
func needTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing in CI; .ci/run installs it", name)
		}
		t.Skipf("%s is not installed", name)
	}
	return path
}

// runInLB starts tether run on cfg in the load-balancer host and waits
// until `nft list tables` shows table (it skips without nft, but in CI).
func runInLB(t *testing.T, env *testenv.Env, cfg, table string) *exec.Cmd {
	t.Helper()
	cmd, _ := runInLBLogs(t, env, cfg, table)
	return cmd
}

// runInLBLogs is runInLB, and the process's output.
func runInLBLogs(t *testing.T, env *testenv.Env, cfg, table string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	needTool(t, "nft")
	dir := t.TempDir()
	path := filepath.Join(dir, "tether.yaml")
	os.WriteFile(path, []byte("admin: {socket: "+filepath.Join(dir, "admin.sock")+"}\n"+cfg), 0o600)
	logs := &syncBuffer{}
	cmd := exec.Command(os.Args[0], "run", "--config", path)
	cmd.Env = append(os.Environ(), "TETHER_TEST_MAIN=1")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := env.LB.Start(cmd); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(nftIn(t, env.LB, "list", "tables"), table) {
		if time.Now().After(deadline) {
			t.Fatalf("tether never applied %s:\n%s", table, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cmd, logs
}

// SIGKILL of tether leaves no tether table in the load-balancer host: the
// table is owned by tether's netlink socket.
func TestKilledTetherLeavesNoRules(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Backends: 1, Label: "kill"})
	cmd := runInLB(t, env, fmt.Sprintf("marks:\n  - name: web\n    mark: 1\n    addresses: [%s]\n    ports: [80, 443]\nservices:\n  - name: web\n    fwmark: 1\n    persistence: {}\n    servers: [{address: %s}]\n",
		testenv.VIP, testenv.BackendAddr(0)), "table inet tether")
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if out := nftIn(t, env.LB, "list", "ruleset"); strings.Contains(out, "tether") {
		t.Fatalf("after SIGKILL the lb still has:\n%s", out)
	}
}

// SIGKILL of tether in director mode with fail_open: the director's
// tables stay (the persist flag), so the kernel goes on forwarding: an
// established flow keeps working, returning clients' new flows reach
// their servers from the kernel template map, and a new client is served
// by the fail-open fallback. The next tether replaces the tables.
// (Before, the tables went with tether and every new flow was refused;
// with kernel_templates off, 9 of the 12 returning clients here reach
// another server: the fallback's hash is not the scheduler's choice.)
func TestKilledFailOpenDirectorKeepsForwarding(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 13, Backends: 3, Label: "dkill"})
	for _, b := range env.Backends {
		if _, err := b.ServeName(8080); err != nil { // its name, then an echo
			t.Fatal(err)
		}
	}
	cfg := fmt.Sprintf("mode: director\ndirector: {fail_open: true}\nservices:\n  - name: echo\n    listen: %s:80\n    scheduler: rr\n    persistence: {}\n    servers: [{address: %s:8080}, {address: %s:8080}, {address: %s:8080}]\n",
		testenv.VIP, testenv.BackendAddr(0), testenv.BackendAddr(1), testenv.BackendAddr(2))
	cmd := runInLB(t, env, cfg, "table ip tether")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vip := netip.AddrPortFrom(testenv.VIP, 80)
	client := env.Clients[0]
	// 12 clients bound by round robin, the first one's connection kept
	// open.
	home := map[netip.Addr]string{}
	var open *testenv.Echo
	for i := range 12 {
		c, err := client.DialEcho(ctx, client.Addr(i), vip)
		if err != nil {
			t.Fatalf("dial through the director: %v", err)
		}
		home[client.Addr(i)] = c.Name
		if i == 0 {
			open = c
			defer c.Close()
			continue
		}
		c.Close()
	}
	if err := open.Say("before"); err != nil {
		t.Fatal(err)
	}
	// The map is written a moment after each bind (the mirror): a client
	// bound just before a kill gets the fallback's choice.
	eventually(t, "every template in the kernel map", func() error {
		out := nftIn(t, env.LB, "list", "map", "ip", "tether", "templates0")
		for src := range home {
			if !strings.Contains(out, src.String()+" ") {
				return fmt.Errorf("%s not in the map yet:\n%s", src, out)
			}
		}
		return nil
	})
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if out := nftIn(t, env.LB, "list", "tables"); !strings.Contains(out, "table ip tether\n") {
		t.Fatalf("with fail_open the director table should outlive a killed tether:\n%s", out)
	}
	if err := open.Say("after"); err != nil {
		t.Errorf("the established flow broke with tether: %v", err)
	}
	for src, want := range home {
		nc, err := client.DialEcho(ctx, src, vip)
		if err != nil {
			t.Fatalf("returning client %s after the kill: %v", src, err)
		}
		if nc.Name != want {
			t.Errorf("returning client %s reached %s after the kill, want its server %s (the kernel map)", src, nc.Name, want)
		}
		nc.Close()
	}
	nc, err := client.DialEcho(ctx, client.Addr(12), vip)
	if err != nil {
		t.Fatalf("a new client after the kill (the fail-open fallback): %v", err)
	}
	nc.Close()
	// The next tether replaces the tables a killed one left.
	again := runInLB(t, env, cfg, "table ip tether")
	defer again.Process.Kill()
	if nc, err = client.DialEcho(ctx, client.Addr(0), vip); err != nil {
		t.Fatalf("through the restarted director: %v", err)
	}
	nc.Close()
}

// Without fail_open a killed director leaves no rules: an established flow
// keeps working (conntrack and the NAT anchor carry it), and a new flow is
// answered at once (refused) rather than black-holed.
func TestKilledDirectorKeepsFlows(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, Backends: 1, Label: "dkill"})
	if _, err := env.Backends[0].ServeName(8080); err != nil { // its name, then an echo
		t.Fatal(err)
	}
	cmd := runInLB(t, env, fmt.Sprintf("mode: director\nservices:\n  - name: echo\n    listen: %s:80\n    persistence: {}\n    servers: [{address: %s:8080}]\n",
		testenv.VIP, testenv.BackendAddr(0)), "table ip tether")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vip := netip.AddrPortFrom(testenv.VIP, 80)
	c, err := env.Clients[0].DialEcho(ctx, env.Clients[0].Addr(0), vip)
	if err != nil {
		t.Fatalf("dial through the director: %v", err)
	}
	defer c.Close()
	if c.Name != "backend0" {
		t.Fatalf("served by %q, want backend0", c.Name)
	}
	if err := c.Say("before"); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if out := nftIn(t, env.LB, "list", "tables"); strings.Contains(out, "table ip tether\n") || strings.Contains(out, "table inet tether") {
		t.Fatalf("after SIGKILL the lb still has:\n%s", out)
	}
	if err := c.Say("after"); err != nil {
		t.Errorf("the established flow broke with tether: %v", err)
	}
	start := time.Now()
	nc, err := env.Clients[0].Dial(ctx, "tcp", env.Clients[0].Addr(0), vip.String())
	if err == nil {
		nc.Close()
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("a new flow after the kill: %v after %s, want an answer (connection refused), not silence", err, time.Since(start).Round(time.Millisecond))
	}
}
