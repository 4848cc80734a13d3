package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/tetherlb/tether/nft"
	"github.com/tetherlb/tether/testenv"
)

// A mark service's access lists are kernel rules: a TCP client in deny, or
// outside allow, gets its SYN answered with a reset by nftables (connect
// fails at once with ECONNREFUSED; tether's own check would have accepted
// and then reset); an allowed client is served.
func TestMarkServiceAccessListInKernel(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 3, Backends: 3, Label: "macl"})
	serveNames(t, env, 80, 443)
	c := env.Clients[0]
	allow := netip.PrefixFrom(c.Addr(0), 31).Masked()
	if allow.Contains(c.Addr(2)) || !allow.Contains(c.Addr(1)) {
		t.Fatalf("%s must hold client 1 but not client 2", allow)
	}
	cfg := strings.Replace(markConfig(true), "    scheduler: rr\n", "    scheduler: rr\n    allow: ["+allow.String()+"]\n    deny: ["+c.Addr(1).String()+"]\n", 1)
	startInLB(t, env, cfg, Options{})
	for _, port := range []uint16{80, 443} {
		vip := netip.AddrPortFrom(testenv.VIP, port)
		ok, err := c.DialEcho(context.Background(), c.Addr(0), vip)
		if err != nil {
			t.Fatalf("the allowed client on %d: %v", port, err)
		}
		ok.Close()
		for _, a := range []netip.Addr{c.Addr(1), c.Addr(2)} {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			conn, err := c.Dial(ctx, "tcp", a, vip.String())
			cancel()
			if err == nil {
				conn.Close()
				t.Errorf("client %s on %d: connected; want the kernel's reset", a, port)
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("client %s on %d: %v; want connection refused (the kernel's reset to the SYN)", a, port, err)
			}
		}
	}
	// Each refusal counted: two clients, two ports.
	if n := aclCounted(t, env, nftables.TableFamilyINet, "prerouting"); n != 4 {
		t.Errorf("the access-list rules counted %d packets, want 4", n)
	}
}

// aclCounted sums the packets the counters of the lb's rules of table
// (family fam) counted: its access-list rules are the ones with counters.
func aclCounted(t *testing.T, env *testenv.Env, fam nftables.TableFamily, chain string) uint64 {
	t.Helper()
	var n uint64
	err := env.LB.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		rules, err := c.GetRules(&nftables.Table{Name: nft.TableName, Family: fam}, &nftables.Chain{Name: chain})
		for _, r := range rules {
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					n += ctr.Packets
				}
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The UDP side of a mark service's access lists: a denied client's
// datagrams are dropped by the kernel's rule (counted there), an allowed
// one is answered.
func TestMarkServiceAccessListInKernelUDP(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 2, Backends: 1, Label: "maclu"})
	if _, err := env.Backends[0].ServeUDP(53); err != nil {
		t.Fatal(err)
	}
	c := env.Clients[0]
	startInLB(t, env, fmt.Sprintf(`marks:
  - name: dns
    mark: 0x300
    protocol: udp
    addresses: [%s]
    ports: [53]
mark_mask: 0xff00
services:
  - name: dns
    fwmark: 0x300
    persistence: {}
    deny: [%s]
    servers: [{address: %s}]
`, testenv.VIP, c.Addr(1), testenv.BackendAddr(0)), Options{})
	ask := func(src netip.Addr) (string, error) {
		conn, err := c.Dial(context.Background(), "udp", src, netip.AddrPortFrom(testenv.VIP, 53).String())
		if err != nil {
			return "", err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(time.Second))
		if _, err := conn.Write([]byte("who?")); err != nil {
			return "", err
		}
		b := make([]byte, 64)
		n, err := conn.Read(b)
		return strings.TrimSpace(string(b[:n])), err
	}
	if name, err := ask(c.Addr(0)); err != nil || name != "backend0" {
		t.Fatalf("the allowed client: %q, %v", name, err)
	}
	before := aclCounted(t, env, nftables.TableFamilyINet, "prerouting")
	if name, err := ask(c.Addr(1)); err == nil {
		t.Errorf("the denied client was answered by %q", name)
	}
	if n := aclCounted(t, env, nftables.TableFamilyINet, "prerouting"); n != before+1 {
		t.Errorf("the access-list rules counted %d datagrams of the denied client, want 1", n-before)
	}
}
