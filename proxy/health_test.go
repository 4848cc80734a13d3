package proxy

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherlb/tether/api"
)

// syncBuffer is a log destination safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// flagCheck is an exec health check that fails while the file named after
// the server's port exists in dir: the test decides each server's health.
func flagCheck(dir string, extra string) string {
	return fmt.Sprintf("    health_check: {type: exec, interval: 20ms, timeout: 1s, rise: 2, fall: 2%s, command: [sh, -c, 'test ! -e %s/$TETHER_SERVER_PORT']}\n", extra, dir)
}

func setHealthy(t *testing.T, dir string, b *backend, healthy bool) {
	t.Helper()
	path := filepath.Join(dir, fmt.Sprint(b.addr.Port()))
	if healthy {
		os.Remove(path)
	} else if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// inhibit_on_failure: a failing server goes to weight 0 and keeps its
// clients; without it the server goes down and its clients move.
func TestHealthInhibitOnFailure(t *testing.T) {
	for _, inhibit := range []bool{true, false} {
		t.Run(fmt.Sprintf("inhibit=%v", inhibit), func(t *testing.T) {
			dir := t.TempDir()
			a, b := startBackend(t, "a"), startBackend(t, "b")
			listen := freeAddr(t)
			extra := flagCheck(dir, "") + "    persistence: {timeout: 600}\n"
			if inhibit {
				extra += "    inhibit_on_failure: true\n"
			}
			logs := &syncBuffer{}
			p := startProxy(t, mustConfig(t, "services:\n"+serviceYAML("web", listen, "rr", extra, a, b)), Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
			owner := map[int]string{}
			for i := range 8 {
				name, err := who(srcAddr(i), listen)
				if err != nil {
					t.Fatal(err)
				}
				owner[i] = name
			}
			setHealthy(t, dir, b, false)
			want := map[bool]string{true: "inhibited", false: "down"}[inhibit]
			waitState(t, p, "web", b.addr.String(), want, time.Now())
			// More failed checks change nothing: the change is logged once.
			k := checkKey{p.serviceByName("web").key, b.addr}
			st, _ := p.health.Status(k)
			deadline := time.Now().Add(5 * time.Second)
			for s, _ := p.health.Status(k); s.Checks < st.Checks+3; s, _ = p.health.Status(k) {
				if time.Now().After(deadline) {
					t.Fatalf("checks stopped at %d", s.Checks)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if n := strings.Count(logs.String(), "real server down: failed its health check"); n != 1 {
				t.Errorf("the change was logged %d times, want once:\n%s", n, logs.String())
			}
			for i := range 8 {
				name, err := who(srcAddr(i), listen)
				if err != nil {
					t.Fatal(err)
				}
				switch {
				case owner[i] == "a" && name != "a":
					t.Errorf("client %d moved off the healthy server to %s", i, name)
				case owner[i] == "b" && inhibit && name != "b":
					t.Errorf("client %d left the inhibited server (quiescent keeps templates) for %s", i, name)
				case owner[i] == "b" && !inhibit && name != "a":
					t.Errorf("client %d of the down server went to %s, want a", i, name)
				}
			}
			for i := 8; i < 16; i++ {
				if name, err := who(srcAddr(i), listen); err != nil || name != "a" {
					t.Errorf("new client %d went to %q (%v), want a", i, name, err)
				}
			}
			setHealthy(t, dir, b, true)
			waitState(t, p, "web", b.addr.String(), "up", time.Now())
			if st := p.Status()[0].Servers[1]; st.Weight != 1 {
				t.Errorf("weight %d once up again, want 1", st.Weight)
			}
		})
	}
}

// A server that starts down takes no client until rise checks pass; below
// its quorum a service sends new clients to the sorry server, or refuses
// them without one.
func TestHealthStartDownQuorumAndSorry(t *testing.T) {
	dir := t.TempDir()
	a, b, sorry := startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "sorry")
	setHealthy(t, dir, b, false)
	listen, bare := freeAddr(t), freeAddr(t)
	extra := flagCheck(dir, ", start: down") + "    quorum: 2\n"
	p := startProxy(t, mustConfig(t, "services:\n"+
		serviceYAML("web", listen, "rr", extra+"    sorry_server: "+sorry.addr.String()+"\n", a, b)+
		serviceYAML("bare", bare, "rr", extra, a, b)), Options{})
	// a starts down too, and its check passes after rise checks.
	waitState(t, p, "web", a.addr.String(), "up", time.Now())
	if st := p.Status()[0]; st.Servers[1].State != "down" || st.Quorate {
		t.Fatalf("b is %s, quorate %v; want down (start: down, check failing) and below quorum", st.Servers[1].State, st.Quorate)
	}
	for i := range 4 {
		if name, err := who(srcAddr(i), listen); err != nil || name != "sorry" {
			t.Errorf("below quorum: client %d got %q (%v), want the sorry server", i, name, err)
		}
		if name, err := who(srcAddr(i), bare); err == nil {
			t.Errorf("below quorum without a sorry server: client %d was served by %s, want a refusal", i, name)
		}
	}
	setHealthy(t, dir, b, true)
	for _, svc := range []string{"web", "bare"} {
		for _, srv := range []*backend{a, b} {
			waitState(t, p, svc, srv.addr.String(), "up", time.Now())
		}
	}
	seen := map[string]int{}
	for i := range 8 {
		for _, l := range []string{listen, bare} {
			name, err := who(srcAddr(i), l)
			if err != nil {
				t.Fatal(err)
			}
			seen[name]++
		}
	}
	if seen["sorry"] != 0 || seen["a"] == 0 || seen["b"] == 0 {
		t.Errorf("at quorum: %v, want a and b, no sorry server", seen)
	}
}

// server set: drain keeps clients but takes no new ones, down moves them,
// up undoes both, weight rebuilds the scheduler; a reload goes back to the
// file. Bad requests name what is wrong.
func TestSetServer(t *testing.T) {
	a, b := startBackend(t, "a"), startBackend(t, "b")
	listen := freeAddr(t)
	yaml := "services:\n" + serviceYAML("web", listen, "wrr", "    persistence: {timeout: 600}\n", a, b)
	p := startProxy(t, mustConfig(t, yaml), Options{})
	owner := map[int]string{}
	for i := range 8 {
		owner[i], _ = who(srcAddr(i), listen)
	}
	if err := p.SetServer("web", b.addr.String(), api.ServerChange{Drain: true}); err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		if name, _ := who(srcAddr(i), listen); name != owner[i] {
			t.Errorf("drain: client %d moved from %s to %s", i, owner[i], name)
		}
	}
	if name, _ := who(srcAddr(20), listen); name != "a" {
		t.Errorf("drain: a new client went to %s, want a", name)
	}
	if err := p.SetServer("web", b.addr.String(), api.ServerChange{Down: true}); err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		if name, _ := who(srcAddr(i), listen); name != "a" {
			t.Errorf("down: client %d went to %s, want a", i, name)
		}
	}
	if st := p.Status()[0].Servers[1].State; st != "maint" {
		t.Errorf("state %s after --down, want maint", st)
	}
	if err := p.SetServer("web", b.addr.String(), api.ServerChange{Up: true}); err != nil {
		t.Fatal(err)
	}
	three := 3
	if err := p.SetServer("web", a.addr.String(), api.ServerChange{Weight: &three}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.RemoveTemplates(api.TemplateFilter{Service: "web"}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for i := 40; i < 80; i++ {
		name, _ := who(srcAddr(i), listen)
		seen[name]++
	}
	if seen["a"] != 30 || seen["b"] != 10 {
		t.Errorf("weights 3:1 gave %v, want a:30 b:10", seen)
	}
	if err := p.Reload(mustConfig(t, yaml)); err != nil {
		t.Fatal(err)
	}
	if st := p.Status()[0].Servers[0]; st.Weight != 1 {
		t.Errorf("weight %d after a reload, want the file's 1", st.Weight)
	}
	for _, tc := range []struct {
		service, server string
		ch              api.ServerChange
		want            string
	}{
		{"shop", a.addr.String(), api.ServerChange{Up: true}, `service "shop": not found`},
		{"web", "127.0.0.9:1", api.ServerChange{Up: true}, "server 127.0.0.9:1 of service web: not found"},
		{"web", "backend-a", api.ServerChange{Up: true}, `server "backend-a" is not an address`},
		{"web", a.addr.String(), api.ServerChange{Up: true, Down: true}, "exactly one of"},
		{"web", a.addr.String(), api.ServerChange{Weight: new(int)}, ""},
		{"web", a.addr.String(), api.ServerChange{Weight: func() *int { w := 70000; return &w }()}, "weight 70000 is outside 0..65535"},
	} {
		err := p.SetServer(tc.service, tc.server, tc.ch)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("SetServer(%s, %s, %+v) = %v, want %q", tc.service, tc.server, tc.ch, err, tc.want)
		}
	}
}

// A UDP flow whose server goes down is closed, so the client's next
// datagram, on the same flow, is rescheduled: a flow has no end of its
// own to show the server's death.
func TestHealthDownClosesUDPFlows(t *testing.T) {
	dir := t.TempDir()
	a, b := udpBackend(t, "a"), udpBackend(t, "b")
	listen := freeUDPAddr(t)
	p := startProxy(t, mustConfig(t, udpConfig(listen, "rr", flagCheck(dir, "")+"    persistence: {}\n", a, b)), Options{})
	waitState(t, p, "dns", a.String(), "up", time.Now())
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 9, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	vip := netip.MustParseAddrPort(listen)
	first, _, err := askUDP(c, vip)
	if err != nil {
		t.Fatal(err)
	}
	port := map[string]uint16{"a": a.Port(), "b": b.Port()}[first]
	other := map[string]string{"a": "b", "b": "a"}[first]
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(port)), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waitState(t, p, "dns", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String(), "down", time.Now())
	// The server still answers: only the flow's closing can move the client.
	if got, _, err := askUDP(c, vip); err != nil || got != other {
		t.Errorf("after %s went down the same flow got %q (%v), want %s", first, got, err, other)
	}
}

// quorum_down runs when a service falls below its quorum and quorum_up
// when it is back (keepalived's hooks), in that order, with the service and
// the direction in their environment.
func TestQuorumHooks(t *testing.T) {
	dir := t.TempDir()
	a, b := startBackend(t, "a"), startBackend(t, "b")
	listen := freeAddr(t)
	log := filepath.Join(dir, "hooks.log")
	hook := fmt.Sprintf(`["/bin/sh", "-c", "echo $TETHER_SERVICE $TETHER_QUORUM $0 >> %s"`, log)
	extra := flagCheck(dir, "") + "    quorum: 2\n" + "    quorum_up: " + hook + `, "up-hook"]` + "\n    quorum_down: " + hook + `, "down-hook"]` + "\n"
	p := startProxy(t, mustConfig(t, "services:\n"+serviceYAML("web", listen, "rr", extra, a, b)), Options{})
	waitState(t, p, "web", b.addr.String(), "up", time.Now())
	setHealthy(t, dir, b, false)
	waitState(t, p, "web", b.addr.String(), "down", time.Now())
	setHealthy(t, dir, b, true)
	waitState(t, p, "web", b.addr.String(), "up", time.Now())
	want := "web down down-hook\nweb up up-hook\n"
	var got []byte
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got, _ = os.ReadFile(log); string(got) == want {
			return
		}
	}
	t.Errorf("hooks ran as %q, want %q", got, want)
}
