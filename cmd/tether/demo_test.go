package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/tetherlb/tether/testenv"
)

func TestMain(m *testing.M) {
	// The test binary doubles as the tether binary for tests that need it
	// in a process of its own.
	if os.Getenv("TETHER_TEST_MAIN") == "1" {
		// TETHER_TEST_NOFILE runs tether at that descriptor limit, soft
		// and hard, as a host with a low ulimit -n would.
		if n, err := strconv.ParseUint(os.Getenv("TETHER_TEST_NOFILE"), 10, 64); err == nil {
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
				panic(err)
			}
		}
		main()
		os.Exit(0)
	}
	os.Exit(testenv.Main(m))
}

// tether runs the CLI in a child process and returns its combined output.
func tether(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "TETHER_TEST_MAIN=1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestTestenvUpExecDown(t *testing.T) {
	testenv.Require(t)
	if os.Geteuid() != 0 {
		t.Skip("tether testenv up names namespaces under /run/netns: root only")
	}
	out, err := tether(t, "testenv", "up", "--clients", "2", "--addrs", "3", "--backends", "2")
	t.Cleanup(func() { tether(t, "testenv", "down") })
	if err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	for _, want := range []string{"lb ", "client1 ", "backend1 ", "198.18.2.11"} {
		if !strings.Contains(out, want) {
			t.Errorf("up output lacks %q:\n%s", want, out)
		}
	}
	if out, err := tether(t, "testenv", "up"); err == nil || !strings.Contains(out, "up already") {
		t.Errorf("second up: %v\n%s", err, out)
	}
	out, err = tether(t, "testenv", "exec", "backend1", "--", "cat", "/proc/net/fib_trie")
	if err != nil || !strings.Contains(out, "198.19.0.12") {
		t.Errorf("exec in backend1 does not see its address: %v\n%.300s", err, out)
	}
	if out, err := tether(t, "testenv", "exec", "nohost", "--", "true"); err == nil || !strings.Contains(out, `no host "nohost"`) {
		t.Errorf("exec in a missing host: %v %s", err, out)
	}
	out, err = tether(t, "testenv", "down")
	if err != nil || strings.Count(out, "removed") != 5 {
		t.Fatalf("down: %v\n%s", err, out)
	}
	if n, _ := testenv.Find("cli", "lb"); n != "" {
		t.Errorf("%s still there after down", n)
	}
}

// The demo runs (in CI too) and prints its tables.
func TestDemo(t *testing.T) {
	testenv.Require(t)
	var out bytes.Buffer
	if err := demo(context.Background(), &out); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	if os.Getenv("CI") == "true" && strings.Contains(out.String(), "the FTP column is skipped") {
		t.Errorf("CI installs vsftpd and curl; the demo skipped FTP:\n%s", out.String())
	}
	for _, want := range []string{
		"which backend served each client group",
		"client group    clients  backend",
		"no client saw two backends",
		"persistence table (6 of 13 templates)",
		"groups moved off backend1 once and stayed on their new backend",
		"part 2: one firewall mark over TCP and UDP 80, 443, 21 and 30000-30099",
		"0 of 50 clients saw two backends across TCP 80, 443, UDP 443 and FTP",
		"done: namespaces, links, rules and servers removed.",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}
