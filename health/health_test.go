package health

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherlb/tether/config"
)

// scripted is a probe that returns the results it is fed, one per check,
// and blocks between them: the test decides every check's outcome.
type scripted chan error

func (s scripted) probe(ctx context.Context) error {
	select {
	case err := <-s:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func check(typ config.CheckType) config.HealthCheck {
	return config.HealthCheck{Type: typ, Interval: config.Duration(time.Millisecond), Timeout: config.Duration(time.Minute), Rise: 2, Fall: 3, Start: "up"}
}

// Fall failures in a row take a server down, rise successes bring it
// back; a broken streak changes nothing, and each change is reported once.
func TestRiseAndFall(t *testing.T) {
	changes := make(chan Change[string], 10)
	m := NewMonitor(func(c Change[string]) { changes <- c })
	defer m.Close()
	s := make(scripted)
	if started := m.Set(map[string]Target{"a": {Check: check("tcp"), Probe: s.probe}}); len(started) != 1 {
		t.Fatalf("started %v, want [a]", started)
	}
	fail := errors.New("refused")
	steps := []struct {
		err  error
		want string // the change this check must report, or ""
	}{
		{nil, ""}, {fail, ""}, {fail, ""}, {nil, ""}, // two failures, then a success: no change
		{fail, ""}, {fail, ""}, {fail, "down"},
		{nil, ""}, {fail, ""}, {nil, ""}, {nil, "up"},
	}
	for i, st := range steps {
		s <- st.err
		// The next check starts only after this one's change is reported,
		// so feeding the next result proves what this one did.
		if st.want == "" {
			continue
		}
		c := <-changes
		if got := map[bool]string{true: "up", false: "down"}[c.Up]; got != st.want || c.Key != "a" {
			t.Fatalf("step %d: change %+v, want %s", i, c, st.want)
		}
		if !m.Current("a", c.Gen) {
			t.Errorf("step %d: change not current", i)
		}
	}
	s <- nil // one more check: everything before it is reported
	select {
	case c := <-changes:
		t.Fatalf("unexpected change %+v", c)
	default:
	}
	if st, _ := m.Status("a"); !st.Up || st.Checks < uint64(len(steps)) || st.Fails != 6 {
		t.Errorf("status %+v, want up after %d checks with 6 failures", st, len(steps))
	}
}

// A target that starts down (keepalived's alpha) needs rise successes; a
// changed check restarts the target in its start state, an unchanged one
// keeps running, and a removed target's late change is not current.
func TestStartDownAndSet(t *testing.T) {
	changes := make(chan Change[string], 10)
	m := NewMonitor(func(c Change[string]) { changes <- c })
	defer m.Close()
	down := check("tcp")
	down.Start = "down"
	a, b := make(scripted), make(scripted)
	m.Set(map[string]Target{"a": {Check: down, Probe: a.probe}, "b": {Check: check("tcp"), Probe: b.probe}})
	if st, _ := m.Status("a"); st.Up {
		t.Fatal("a starts up, want down")
	}
	a <- nil
	a <- nil
	c := <-changes
	if !c.Up || c.Key != "a" {
		t.Fatalf("change %+v, want a up", c)
	}
	if started := m.Set(map[string]Target{"a": {Check: down, Probe: a.probe}, "b": {Check: check("http"), Probe: b.probe}}); len(started) != 1 || started[0] != "b" {
		t.Errorf("started %v, want only b (its check changed)", started)
	}
	if st, _ := m.Status("a"); !st.Up {
		t.Error("a lost its state on a Set that kept its check")
	}
	m.Set(map[string]Target{})
	if m.Current("a", c.Gen) {
		t.Error("a removed target is still current")
	}
}

func TestProbes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "status: ready host=%s", r.Host) })
	mux.HandleFunc("/busy", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "busy", http.StatusServiceUnavailable) })
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Close()
	web := netip.MustParseAddrPort(ln.Addr().String())
	closed := closedPort(t)

	uc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	go func() {
		buf := make([]byte, 100)
		for {
			n, from, err := uc.ReadFrom(buf)
			if err != nil {
				return
			}
			uc.WriteTo(append([]byte("pong "), buf[:n]...), from)
		}
	}()
	echo := netip.MustParseAddrPort(uc.LocalAddr().String())

	for _, tc := range []struct {
		name    string
		hc      config.HealthCheck
		server  netip.AddrPort
		wantErr string // "" passes
	}{
		{"tcp up", with("tcp", func(*config.HealthCheck) {}), web, ""},
		{"tcp refused", with("tcp", func(*config.HealthCheck) {}), closed, "refused"},
		{"tcp on check port", with("tcp", func(h *config.HealthCheck) { h.Port = web.Port() }), closed, ""},
		{"http ok", with("http", func(h *config.HealthCheck) { h.Path, h.ExpectStatus, h.ExpectBody = "/ok", "200", "ready" }), web, ""},
		{"http host", with("http", func(h *config.HealthCheck) {
			h.Path, h.ExpectStatus, h.ExpectBody, h.Host = "/ok", "200-299", "host=shop.example", "shop.example"
		}), web, ""},
		{"http status", with("http", func(h *config.HealthCheck) { h.Path, h.ExpectStatus = "/busy", "200-399" }), web, "status 503, want 200-399"},
		{"http body", with("http", func(h *config.HealthCheck) { h.Path, h.ExpectStatus, h.ExpectBody = "/ok", "200", "healthy" }), web, `lack "healthy"`},
		{"udp reply", with("udp", func(h *config.HealthCheck) { h.Send, h.Expect = "ping", "pong ping" }), echo, ""},
		{"udp wrong reply", with("udp", func(h *config.HealthCheck) { h.Send, h.Expect = "ping", "PONG" }), echo, `lacks "PONG"`},
		{"udp refused", with("udp", func(h *config.HealthCheck) { h.Send = "ping" }), closed, "refused"},
		{"exec ok", with("exec", func(h *config.HealthCheck) {
			h.Command = []string{"sh", "-c", `test "$TETHER_SERVER" = 127.0.0.1:8080 && test "$TETHER_SERVER_PORT" = 8080`}
		}), netip.MustParseAddrPort("127.0.0.1:8080"), ""},
		{"exec fails", with("exec", func(h *config.HealthCheck) { h.Command = []string{"sh", "-c", "echo backend is sad; exit 3"} }), web, "exit status 3: backend is sad"},
		{"exec timeout", with("exec", func(h *config.HealthCheck) {
			h.Command, h.Timeout = []string{"sleep", "10"}, config.Duration(50*time.Millisecond)
		}), web, "killed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runProbe(ctx, t, tc.hc, tc.server, tc.wantErr)
		})
	}
}

// closedPort is a loopback port nothing listens on (TCP and UDP).
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return ap
}

// The first checks of targets started together are spread over the
// interval (HAProxy does the same at start), not all at the same instant.
func TestFirstChecksSpread(t *testing.T) {
	m := NewMonitor(func(Change[int]) {})
	defer m.Close()
	const n, interval = 4, 800 * time.Millisecond
	first := make(chan time.Duration, n)
	start := time.Now()
	ts := map[int]Target{}
	for i := range n {
		var once sync.Once
		hc := check("tcp")
		hc.Interval = config.Duration(interval)
		ts[i] = Target{Check: hc, Probe: func(ctx context.Context) error {
			once.Do(func() { first <- time.Since(start) })
			return nil
		}}
	}
	m.Set(ts)
	var got []time.Duration
	for range n {
		got = append(got, <-first)
	}
	slices.Sort(got)
	// Offsets 0, 1/4, 1/2 and 3/4 of the interval: the earliest at once,
	// the latest well after a quarter of it.
	if got[0] > interval/4 || got[n-1] < interval/2 {
		t.Errorf("first checks at %v over an interval of %v, want them spread over it", got, interval)
	}
}

// https: TLS without verification by default (keepalived's SSL_GET), with
// SNI when named, then the http check's status, body and digest;
// verify_tls refuses a certificate the system does not trust.
func TestHTTPSProbe(t *testing.T) {
	var sni atomic.Value
	body := "status: ready"
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sni.Store(r.TLS.ServerName)
		io.WriteString(w, body)
	}))
	defer srv.Close()
	target := netip.MustParseAddrPort(srv.Listener.Addr().String())
	sum := md5.Sum([]byte(body))
	digest := hex.EncodeToString(sum[:])
	get := func(typ config.CheckType, f func(*config.HealthCheck)) config.HealthCheck {
		return with(typ, func(h *config.HealthCheck) { h.Path, h.ExpectStatus = "/", "200"; f(h) })
	}
	for _, tc := range []struct {
		name    string
		hc      config.HealthCheck
		wantErr string
		wantSNI string
	}{
		{"https unverified", get("https", func(h *config.HealthCheck) { h.ExpectBody = "ready" }), "", ""},
		{"https sni", get("https", func(h *config.HealthCheck) { h.SNI = "shop.example" }), "", "shop.example"},
		{"https digest", get("https", func(h *config.HealthCheck) { h.Digest = strings.ToUpper(digest) }), "", ""},
		{"https wrong digest", get("https", func(h *config.HealthCheck) { h.Digest = strings.Repeat("0", 32) }), "body digest " + digest, ""},
		{"https verified", get("https", func(h *config.HealthCheck) { h.VerifyTLS, h.SNI = true, "example.com" }), "certificate", ""},
		{"http to a TLS port", get("http", func(*config.HealthCheck) {}), "status 400", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sni.Store("")
			runProbe(context.Background(), t, tc.hc, target, tc.wantErr)
			if tc.wantErr == "" && sni.Load() != tc.wantSNI {
				t.Errorf("server name %q, want %q", sni.Load(), tc.wantSNI)
			}
		})
	}
}

// runProbe runs hc's probe of server once and wants it to pass (wantErr
// "") or to fail with an error containing wantErr.
func runProbe(ctx context.Context, t *testing.T, hc config.HealthCheck, server netip.AddrPort, wantErr string) {
	t.Helper()
	p, err := NewProbe(hc, server, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, hc.Timeout.D())
	defer cancel()
	err = p(ctx)
	switch {
	case wantErr == "" && err != nil:
		t.Errorf("failed: %v", err)
	case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
		t.Errorf("error %v, want one containing %q", err, wantErr)
	}
}

// with is a check of typ with a one-second timeout, changed by f.
func with(typ config.CheckType, f func(*config.HealthCheck)) config.HealthCheck {
	hc := check(typ)
	hc.Timeout = config.Duration(time.Second)
	f(&hc)
	return hc
}
