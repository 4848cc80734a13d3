package main

import (
	"bytes"
	"fmt"
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

// SIGKILL of tether leaves no tether table in the load-balancer host: the
// table is owned by tether's netlink socket.
func TestKilledTetherLeavesNoRules(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Backends: 1, Label: "kill"})
	if _, err := exec.LookPath("nft"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nft is missing in CI")
		}
		t.Skip("nft is not installed")
	}
	cfg := filepath.Join(t.TempDir(), "m.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("marks:\n  - name: web\n    mark: 1\n    addresses: [%s]\n    ports: [80, 443]\nservices:\n  - name: web\n    fwmark: 1\n    persistence: {}\n    servers: [{address: %s}]\n",
		testenv.VIP, testenv.BackendAddr(0))), 0o600)
	var logs bytes.Buffer
	cmd := exec.Command(os.Args[0], "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "TETHER_TEST_MAIN=1")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := env.LB.Start(cmd); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(nftIn(t, env.LB, "list", "tables"), "table inet tether") {
		if time.Now().After(deadline) {
			t.Fatalf("tether never applied its table:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if out := nftIn(t, env.LB, "list", "ruleset"); strings.Contains(out, "tether") {
		t.Fatalf("after SIGKILL the lb still has:\n%s", out)
	}
}
