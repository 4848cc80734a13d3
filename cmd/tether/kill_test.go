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

// SIGKILL of tether in director mode: the director's tables go with it,
// an established flow keeps working (conntrack and the NAT anchor carry
// it), and a new flow is answered at once rather than black-holed.
func TestKilledDirectorKeepsFlows(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, Backends: 1, Label: "dkill"})
	if _, err := env.Backends[0].ServeName(8080); err != nil { // its name, then an echo
		t.Fatal(err)
	}
	cmd := runInLB(t, env, fmt.Sprintf("mode: director\ndirector: {fail_open: true}\nservices:\n  - name: echo\n    listen: %s:80\n    persistence: {}\n    servers: [{address: %s:8080}]\n",
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
