package proxy

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/testenv"
)

// The director over IPv6 (testenv's 2001:2::/48 hosts): a mark class on
// the IPv6 VIP's ports 80 and 443, persistence by /120 (four client
// addresses to a group): 60 clients go to 80, 443 and 80 again, none sees
// two backends, every group stays together, and the ip6 table's kernel
// template map equals tether's table.
func TestDirectorIPv6PersistenceAcrossPorts(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 60, Backends: 3, Label: "d6"})
	serveNames(t, env, 80, 443)
	var servers strings.Builder
	for i := range env.Backends {
		fmt.Fprintf(&servers, "      - address: \"%s\"\n", testenv.BackendAddr6(i))
	}
	cfg := fmt.Sprintf(`mode: director
marks:
  - name: web6
    mark: 0x200
    addresses: ["%s"]
    ports: [80, 443]
mark_mask: 0xff00
services:
  - name: web6
    fwmark: 0x200
    scheduler: rr
    persistence: {netmask6: "120"}
    servers:
%s`, testenv.VIP6, servers.String())
	p, _ := startInLB(t, env, cfg, Options{})
	visits := env.Clients[0].Drive(context.Background(), testenv.VIP6, []int{80, 443, 80}, 1)
	s := testenv.Summarize(visits)
	if s.Failed != 0 || s.Visits != 180 || len(s.Mixed) != 0 {
		t.Fatalf("%d visits, %d failed, %d clients on two backends: %v", s.Visits, s.Failed, len(s.Mixed), s.Errors)
	}
	if len(s.PerBackend) != 3 {
		t.Errorf("spread %s: every backend should serve some groups", s.Spread())
	}
	group := map[netip.Prefix]string{}
	for a, seen := range s.Seen {
		g := netip.PrefixFrom(a, 120).Masked()
		if b, ok := group[g]; ok && b != seen[0] {
			t.Errorf("group %s: %s and %s", g, b, seen[0])
		}
		group[g] = seen[0]
	}
	// The kernel's map, in the ip6 table, holds each group's template.
	p.syncKernel()
	want := tableTemplatesOf(p, config.ServiceKey{Mark: 0x200})
	got := kernelTemplatesOf(t, env, nftables.TableFamilyIPv6)
	if len(want) != 15 || !maps.Equal(got, want) {
		t.Errorf("kernel map %v, table %v; want the 15 groups in both", got, want)
	}
	t.Logf("IPv6 director: 60 clients in 15 groups, %s", s.Spread())
}

// An IPv6 mark class through the socket proxy, on both paths: listeners
// on [VIP6]:80 and :443 (tproxy: auto, the VIP is local) and TPROXY
// (always). 60 clients, 80 then 443 then 80: none sees two backends.
func TestMarkServiceIPv6(t *testing.T) {
	for _, tproxy := range []string{config.TProxyAuto, config.TProxyAlways} {
		t.Run(tproxy, func(t *testing.T) {
			env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 60, Backends: 3, Label: "m6" + tproxy[:2]})
			serveNames(t, env, 80, 443)
			cfg := fmt.Sprintf("tproxy: %s\nmarks:\n  - {name: web6, mark: 0x200, addresses: [\"%s\"], ports: [80, 443]}\nservices:\n  - name: web6\n    fwmark: 0x200\n    scheduler: rr\n    persistence: {}\n    servers: [{address: \"%s\"}, {address: \"%s\"}, {address: \"%s\"}]\n",
				tproxy, testenv.VIP6, testenv.BackendAddr6(0), testenv.BackendAddr6(1), testenv.BackendAddr6(2))
			startInLB(t, env, cfg, Options{})
			table, _ := execIn(env.LB, "nft", "list", "table", "inet", "tether")
			listened := tproxy == config.TProxyAuto
			if tproxied := strings.Contains(table, "tproxy ip6"); tproxied == listened {
				t.Errorf("tproxy %s: the table's tproxy ip6 rule is there: %v\n%s", tproxy, tproxied, table)
			}
			if socks := vipListeners(t, env); socks[netip.AddrPortFrom(testenv.VIP6, 443)] != listened {
				t.Errorf("tproxy %s: a socket listens on [%s]:443: %v", tproxy, testenv.VIP6, !listened)
			}
			s := testenv.Summarize(env.Clients[0].Drive(context.Background(), testenv.VIP6, []int{80, 443, 80}, 1))
			if s.Failed != 0 || s.Visits != 180 || len(s.Mixed) != 0 {
				t.Fatalf("%d visits, %d failed, %d clients on two backends: %v", s.Visits, s.Failed, len(s.Mixed), s.Errors)
			}
			if len(s.PerBackend) != 3 {
				t.Errorf("spread %s: every backend should serve some clients", s.Spread())
			}
		})
	}
}
