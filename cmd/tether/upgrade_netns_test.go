package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherlb/tether/admin"
	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/testenv"
)

// A hot upgrade of a firewall-mark service, through the proxy and through
// the director: the new process takes the transparent listeners and the
// class's listeners on the VIP's ports (or binds the block of queues after
// the old one's) and applies its own tables under the other name, so both
// sets steer until the old one's go.
// Under a steady load from 40 client addresses on ports 80 and 443, no
// connection fails and every client stays on its backend; after the
// upgrade only the new tables are left, and they are the new process's
// to change (a second upgrade takes the first name back).
func TestHotUpgradeMarkService(t *testing.T) {
	for _, mode := range []string{"proxy", "director"} {
		t.Run(mode, func(t *testing.T) { hotUpgradeMarks(t, mode) })
	}
}

func hotUpgradeMarks(t *testing.T, mode string) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 40, Backends: 3, Label: "up" + mode[:3]})
	for _, b := range env.Backends {
		for _, port := range []int{80, 443} {
			if _, err := b.ServeName(port); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfg := fmt.Sprintf(`drain_timeout: 5s
mode: %s
marks:
  - {name: web, mark: 0x100, addresses: [%s], ports: [80, 443]}
services:
  - name: web
    fwmark: 0x100
    scheduler: rr
    persistence: {timeout: 300s}
    servers: [{address: %s}, {address: %s}, {address: %s}]
`, mode, testenv.VIP, testenv.BackendAddr(0), testenv.BackendAddr(1), testenv.BackendAddr(2))
	families := []string{"inet"}
	if mode == "director" {
		families = append(families, "ip")
	}
	old, logs := runInLBLogs(t, env, cfg, "table "+families[len(families)-1]+" tether\n")
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

	try := func(w, i int) (string, string, error) {
		a := client.Addrs[(i*4+w)%len(client.Addrs)]
		name, err := who(a, []int{80, 443}[i%2])
		return name, home[a], err
	}
	// Each upgrade under load; the tables are looked at with the load
	// stopped: under it the director rewrites a kernel template element
	// at every last close, each a transaction, and nft list (which
	// starts over when the ruleset changes under its dump) took a minute.
	upgrade := func(pid int, table string) int {
		t.Helper()
		ld := startLoad(try)
		time.Sleep(100 * time.Millisecond) // load before
		child := upgradeNow(t, pid, logs)
		ld.more(t, 100)
		ld.end(t, logs)
		eventually(t, "the old process gone", func() error {
			if syscall.Kill(pid, 0) == nil {
				return fmt.Errorf("pid %d still runs", pid)
			}
			return nil
		})
		tables := nftIn(t, env.LB, "list", "tables")
		other := map[string]string{"tether": "tether_upgrade", "tether_upgrade": "tether"}[table]
		for _, fam := range families {
			if !strings.Contains(tables, fam+" "+table+"\n") || strings.Contains(tables, fam+" "+other+"\n") {
				t.Fatalf("tables after the upgrade: %q, want %s %s alone", tables, fam, table)
			}
		}
		return child
	}
	go old.Wait() // reaps it, so that it is gone once it exits
	// A director flow open across the upgrade: the new process counts it
	// on its template once a conntrack scan finds it (the old process's
	// count does not travel).
	var long net.Conn
	if mode == "director" {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		c, err := client.Dial(ctx, "tcp", client.Addrs[0], netip.AddrPortFrom(testenv.VIP, 80).String())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		long = c
		defer long.Close()
	}
	first := upgrade(old.Process.Pid, "tether_upgrade")
	if long != nil {
		sock := filepath.Join(filepath.Dir(old.Args[len(old.Args)-1]), "admin.sock")
		ac := admin.NewClient(sock, "", "")
		eventually(t, "the new process counting the flow open across the upgrade", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			tps, err := ac.Templates(ctx, api.TemplateFilter{})
			if err != nil {
				return err
			}
			for _, tp := range tps {
				if pf, err := netip.ParsePrefix(tp.Client); err == nil && pf.Contains(client.Addrs[0]) {
					if tp.Active < 1 {
						return fmt.Errorf("%s: active %d", tp.Client, tp.Active)
					}
					return nil
				}
			}
			return fmt.Errorf("no template of %s among %d", client.Addrs[0], len(tps))
		})
		long.Close()
	}
	// The new process owns its tables: a second upgrade goes back to the
	// first name. Its output is the old one's (inherited).
	second := upgrade(first, "tether")
	syscall.Kill(second, syscall.SIGTERM)
}
