package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherlb/tether/testenv"
)

// A hot upgrade of a firewall-mark service (TPROXY): the new process
// takes the transparent listeners and applies its own table under the
// other name, so both tables steer until the old one's goes with its
// process. Under a steady load from 40 client addresses on ports 80 and
// 443, no connection fails and every client stays on its backend; after
// the upgrade only the new table is left, and it is the new process's to
// change (a second upgrade takes the first name back).
func TestHotUpgradeMarkService(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 40, Backends: 3, Label: "upmark"})
	for _, b := range env.Backends {
		for _, port := range []int{80, 443} {
			if _, err := b.ServeName(port); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfg := fmt.Sprintf(`drain_timeout: 5s
marks:
  - {name: web, mark: 0x100, addresses: [%s], ports: [80, 443]}
services:
  - name: web
    fwmark: 0x100
    scheduler: rr
    persistence: {timeout: 300s}
    servers: [{address: %s}, {address: %s}, {address: %s}]
`, testenv.VIP, testenv.BackendAddr(0), testenv.BackendAddr(1), testenv.BackendAddr(2))
	old, logs := runInLBLogs(t, env, cfg, "table inet tether")
	client := env.Clients[0]
	who := func(src netip.Addr, port int) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := client.Dial(ctx, "tcp", src, netip.AddrPortFrom(testenv.VIP, uint16(port)).String())
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), err
	}
	home := map[netip.Addr]string{}
	for _, a := range client.Addrs {
		name, err := who(a, 80)
		if err != nil {
			t.Fatalf("%s: %v\n%s", a, err, logs.String())
		}
		home[a] = name
	}

	ld := startLoad(func(w, i int) (string, string, error) {
		a := client.Addrs[(i*4+w)%len(client.Addrs)]
		name, err := who(a, []int{80, 443}[i%2])
		return name, home[a], err
	})
	upgrade := func(pid int, table string) int {
		t.Helper()
		child := upgradeNow(t, pid, logs)
		eventually(t, "only the new table left", func() error {
			tables := nftIn(t, env.LB, "list", "tables")
			other := map[string]string{"tether": "tether_upgrade", "tether_upgrade": "tether"}[table]
			if !strings.Contains(tables, "inet "+table+"\n") || strings.Contains(tables, "inet "+other+"\n") {
				return fmt.Errorf("tables: %q, want inet %s alone", tables, table)
			}
			return nil
		})
		ld.more(t, 100)
		return child
	}
	time.Sleep(100 * time.Millisecond) // load before
	first := upgrade(old.Process.Pid, "tether_upgrade")
	if _, err := old.Process.Wait(); err != nil {
		t.Fatal(err)
	}
	// The new process owns its table: a second upgrade goes back to the
	// first name. Its output is the old one's (inherited).
	second := upgrade(first, "tether")
	ld.end(t, logs)
	syscall.Kill(second, syscall.SIGTERM)
}
