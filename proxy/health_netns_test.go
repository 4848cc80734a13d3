package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/testenv"
)

// A server stopped in testenv is marked down by its health check within
// fall checks, its clients are rescheduled, no client whose server is up
// fails or moves, and the server is back after rise checks; in both data
// paths. In director mode the kernel forwards, so the check is the only
// thing that notices a dead server.
func TestHealthCheckStoppedServer(t *testing.T) {
	const (
		interval = 200 * time.Millisecond
		timeout  = 300 * time.Millisecond
		fall     = 3
		rise     = 2
	)
	for _, mode := range []string{"proxy", "director"} {
		t.Run(mode, func(t *testing.T) {
			env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 40, Backends: 3, Label: "hc" + mode[:1]})
			servers, addrs := serveNames(t, env, 8080), serverLines(env, 8080)
			p, _ := startInLB(t, env, fmt.Sprintf(`services:
  - name: web
    mode: %s
    listen: %s:80
    scheduler: rr
    persistence: {timeout: 600}
    health_check: {type: tcp, interval: %s, timeout: %s, fall: %d, rise: %d}
    servers:
%s`, mode, testenv.VIP, interval, timeout, fall, rise, addrs), Options{})
			ctx := context.Background()
			client := env.Clients[0]
			first := testenv.Summarize(client.Drive(ctx, testenv.VIP, []int{80}, 1))
			if first.Failed != 0 || len(first.PerBackend) != 3 {
				t.Fatalf("before the stop: %d failed, spread %s; want 0 and all three servers", first.Failed, first.Spread())
			}
			owner := map[netip.Addr]string{}
			for a, seen := range first.Seen {
				owner[a] = seen[0]
			}

			stopped := time.Now()
			servers[1].Close()
			downAfter := waitState(t, p, "web", testenv.BackendAddr(1).String()+":8080", "down", stopped)
			// The first failing check runs at most one interval after the
			// stop, and fall of them must fail, each at once (the port
			// refuses): fall-1 intervals at least, fall intervals at most,
			// with a quarter interval for scheduling (one more check would
			// be a whole interval more).
			t.Logf("marked down %v after the stop", downAfter)
			if lo, hi := (fall-1)*interval, fall*interval+interval/4; downAfter < lo || downAfter > hi {
				t.Errorf("marked down %v after the stop, want between %v and %v (interval × fall)", downAfter, lo, hi)
			}

			again := client.Drive(ctx, testenv.VIP, []int{80}, 1)
			moved, stayed := 0, 0
			for _, v := range again {
				switch was := owner[v.Src]; {
				case v.Err != nil:
					t.Errorf("client %s (was on %s) failed: %v", v.Src, was, v.Err)
				case was == "backend1" && v.Backend == "backend1":
					t.Errorf("client %s still reached the stopped server", v.Src)
				case was == "backend1":
					moved++
				case v.Backend != was:
					t.Errorf("client %s moved from %s to %s, though its server is up", v.Src, was, v.Backend)
				default:
					stayed++
				}
			}
			if moved != first.PerBackend["backend1"] || stayed != first.Visits-moved {
				t.Errorf("%d rescheduled and %d stayed, want %d and %d", moved, stayed, first.PerBackend["backend1"], first.Visits-first.PerBackend["backend1"])
			}

			if _, err := env.Backends[1].ServeName(8080); err != nil {
				t.Fatal(err)
			}
			restarted := time.Now()
			upAfter := waitState(t, p, "web", testenv.BackendAddr(1).String()+":8080", "up", restarted)
			t.Logf("back up %v after the restart", upAfter)
			if hi := rise*interval + interval/4; upAfter > hi {
				t.Errorf("back up %v after the restart, want at most %v", upAfter, hi)
			}
			// Templates made meanwhile stay; dropping them all puts
			// backend1 back in the rotation.
			if _, err := p.RemoveTemplates(api.TemplateFilter{Service: "web"}); err != nil {
				t.Fatal(err)
			}
			if third := testenv.Summarize(client.Drive(ctx, testenv.VIP, []int{80}, 1)); third.Failed != 0 || third.PerBackend["backend1"] == 0 {
				t.Errorf("after it came back: %d failed, spread %s; want 0 failed and clients on backend1", third.Failed, third.Spread())
			}
		})
	}
}

// waitState waits until the server's state is want, and returns how long
// after since that was seen. It polls: the state is in the proxy's
// listing, which is what an operator sees too.
func waitState(t *testing.T, p *Proxy, service, server, want string, since time.Time) time.Duration {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, s := range p.Status() {
			for _, srv := range s.Servers {
				if s.Name == service && srv.Address == server && srv.State == want {
					return time.Since(since)
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s of %s not %s after 10s: %+v", server, service, want, p.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// In director mode too, while no server is up new flows go to the sorry
// server (it has a choice mark of its own), and back to the server once
// it passes its checks.
func TestDirectorSorryServer(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Clients: 1, AddrsPerClient: 8, Backends: 2, Label: "sorry"})
	if _, err := env.Backends[1].ServeName(8080); err != nil { // the sorry server
		t.Fatal(err)
	}
	p, _ := startInLB(t, env, fmt.Sprintf(`services:
  - name: web
    mode: director
    listen: %s:80
    health_check: {type: tcp, interval: 100ms, timeout: 300ms, fall: 1, rise: 1}
    sorry_server: %s:8080
    servers: [{address: "%s:8080"}]
`, testenv.VIP, testenv.BackendAddr(1), testenv.BackendAddr(0)), Options{})
	waitState(t, p, "web", testenv.BackendAddr(0).String()+":8080", "down", time.Now())
	ctx := context.Background()
	if s := testenv.Summarize(env.Clients[0].Drive(ctx, testenv.VIP, []int{80}, 1)); s.Failed != 0 || s.PerBackend["backend1"] != s.Visits {
		t.Errorf("with the server down: %d failed, spread %s; want every client on the sorry server backend1", s.Failed, s.Spread())
	}
	if _, err := env.Backends[0].ServeName(8080); err != nil {
		t.Fatal(err)
	}
	waitState(t, p, "web", testenv.BackendAddr(0).String()+":8080", "up", time.Now())
	if s := testenv.Summarize(env.Clients[0].Drive(ctx, testenv.VIP, []int{80}, 1)); s.Failed != 0 || s.PerBackend["backend0"] != s.Visits {
		t.Errorf("with the server up: %d failed, spread %s; want every client on backend0: %v", s.Failed, s.Spread(), s.Errors)
	}
}

// The fail-open fallback (the kernel's own choice while no tether reads
// the queue) follows the servers' state: a server taken down leaves it,
// and comes back with the server; with no server up the sorry server
// takes it.
func TestDirectorFallbackFollowsServers(t *testing.T) {
	env := testenv.Start(t, testenv.Spec{Backends: 3, Label: "fallb"})
	a, b, sorry := testenv.BackendAddr(0).String()+":8080", testenv.BackendAddr(1).String()+":8080", testenv.BackendAddr(2).String()+":8080"
	p, _ := startInLB(t, env, fmt.Sprintf(`mode: director
director: {fail_open: true}
services:
  - name: web
    listen: %s:80
    sorry_server: %s
    servers: [{address: "%s"}, {address: "%s"}]
`, testenv.VIP, sorry, a, b), Options{})
	fallback := func() string {
		t.Helper()
		out, err := execIn(env.LB, "nft", "list", "map", "ip", "tether", "fallback0")
		if err != nil {
			t.Fatalf("nft list map: %v\n%s", err, out)
		}
		return out
	}
	in := func(out, server string) bool {
		ap := netip.MustParseAddrPort(server)
		return strings.Contains(out, ap.Addr().String()+" . "+fmt.Sprint(ap.Port()))
	}
	t.Logf("the fallback map at start:\n%s", fallback())
	if out := fallback(); !in(out, a) || !in(out, b) || in(out, sorry) {
		t.Fatalf("at start the fallback should hold both servers and not the sorry one:\n%s", out)
	}
	if err := env.LB.Do(func() error { return p.SetServer("web", b, api.ServerChange{Down: true}) }); err != nil {
		t.Fatal(err)
	}
	if out := fallback(); !in(out, a) || in(out, b) {
		t.Errorf("with %s down the fallback should hold only %s:\n%s", b, a, out)
	}
	if err := env.LB.Do(func() error { return p.SetServer("web", a, api.ServerChange{Down: true}) }); err != nil {
		t.Fatal(err)
	}
	if out := fallback(); in(out, a) || in(out, b) || !in(out, sorry) {
		t.Errorf("with both servers down the fallback should hold the sorry server only:\n%s", out)
	}
	for _, s := range []string{a, b} {
		if err := env.LB.Do(func() error { return p.SetServer("web", s, api.ServerChange{Up: true}) }); err != nil {
			t.Fatal(err)
		}
	}
	if out := fallback(); !in(out, a) || !in(out, b) || in(out, sorry) {
		t.Errorf("back up, the fallback should hold both servers again:\n%s", out)
	}
}
