package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tetherlb/tether/testenv"
)

// tether nft templates prints the director's kernel template map as the
// kernel holds it: every client that connected, the server it went to,
// and "busy" while its flow is open.
func TestNftTemplates(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 3, Backends: 2, Label: "ktmpl"})
	for _, b := range env.Backends {
		if _, err := b.ServeName(8080); err != nil {
			t.Fatal(err)
		}
	}
	runInLB(t, env, fmt.Sprintf("mode: director\nservices:\n  - name: web\n    listen: %s:80\n    persistence: {}\n    servers: [{address: %s:8080}, {address: %s:8080}]\n",
		testenv.VIP, testenv.BackendAddr(0), testenv.BackendAddr(1)), "table ip tether")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl := env.Clients[0]
	want := map[netip.Addr]string{}
	for _, src := range cl.Addrs {
		c, err := cl.DialEcho(ctx, src, netip.AddrPortFrom(testenv.VIP, 80))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close() // open: its template is busy
		for i, b := range env.Backends {
			if b.Name == c.Name {
				want[src] = netip.AddrPortFrom(testenv.BackendAddr(i), 8080).String()
			}
		}
	}
	var out string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		err := env.LB.Do(func() (err error) {
			out, _, err = runCLI(t, "nft", "templates")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(out, "ip tether templates0") == len(want) || time.Now().After(deadline) {
			break
		}
	}
	for client, server := range want {
		line := fmt.Sprintf("ip tether templates0  %s  %s  busy", client, server)
		if !strings.Contains(strings.Join(strings.Fields(out), "  "), strings.Join(strings.Fields(line), "  ")) {
			t.Errorf("no line %q in:\n%s", line, out)
		}
	}
}
