package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherlb/tether/internal/testserver"
	"github.com/tetherlb/tether/proxy"
	"github.com/urfave/cli/v2"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// nameServer answers each connection with its name, then echoes until
// the client closes: a connection can be held open.
func nameServer(t *testing.T, name string) string {
	return testserver.TCP(t, func(c net.Conn) {
		io.WriteString(c, name+"\n")
		io.Copy(c, c)
	}).String()
}

func ask(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	s, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(s), err
}

// eventually polls f until it succeeds or 10 s pass.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	within(t, 10*time.Second, what, f)
}

// within polls f until it succeeds or d passes.
func within(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("services:\n  - name: web\n    listen: 127.0.0.1:8080\n    servers: [{address: 127.0.0.2:80}]\n"), 0o600)
	out, _, err := runCLI(t, "check", "--config", good)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"scheduler: wlc", "connect_timeout: 5s", "weight: 1", "drain_timeout: 30s"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks the default %q:\n%s", want, out)
		}
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("services:\n  - name: web\n    listen: 127.0.0.1:8080\n    servers: [{address: 127.0.0.2:80, weight: 70000}]\n"), 0o600)
	_, _, err = runCLI(t, "check", "--config", bad)
	if err == nil || !strings.Contains(err.Error(), "bad.yaml:4: services[0].servers[0].weight: 70000 is outside 0..65535") {
		t.Fatalf("check of a bad file: %v", err)
	}
	if code := exitCode(err); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
}

func exitCode(err error) int {
	if ec, ok := err.(interface{ ExitCode() int }); ok {
		return ec.ExitCode()
	}
	return -1
}

func TestRunServesReloadsAndStops(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tether.yaml")
	snap := filepath.Join(dir, "affinity.snap")
	a, b := nameServer(t, "a"), nameServer(t, "b")
	web, api, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := fmt.Sprintf("admin: {socket: %s}\nsnapshot: %s\nmetrics: {listen: %s}\nservices:\n  - name: web\n    listen: %s\n    persistence: {}\n    servers: [{address: %s}]\n", filepath.Join(dir, "admin.sock"), snap, metricsAddr, web, a)
	write(base)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reload := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), path, reload, nil, proxy.Options{})
	}()

	eventually(t, "web serves", func() error {
		n, err := ask(web)
		if err == nil && n != "a" {
			err = fmt.Errorf("answered %q", n)
		}
		return err
	})
	eventually(t, "metrics count the connection", func() error {
		r, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			return err
		}
		defer r.Body.Close()
		body, _ := io.ReadAll(r.Body)
		if !strings.Contains(string(body), `tether_connections_accepted{service="web"}`) {
			return fmt.Errorf("no accepted counter in:\n%.500s", body)
		}
		return nil
	})
	// The metrics listener answers probes too (a pod's, without the admin
	// token). Readiness comes once start-up is over, which may be a moment
	// after the first connection is served and counted: poll for it.
	for _, probe := range []string{"/healthz", "/readyz"} {
		eventually(t, "GET "+probe+" on the metrics listener", func() error {
			r, err := http.Get("http://" + metricsAddr + probe)
			if err != nil {
				return err
			}
			defer r.Body.Close()
			if r.StatusCode != http.StatusOK {
				body, _ := io.ReadAll(r.Body)
				return fmt.Errorf("%s: %s", r.Status, body)
			}
			return nil
		})
	}

	// A bad file is refused and the running config stays.
	write("services: [oops\n")
	reload <- syscall.SIGHUP
	// A good one adds a service.
	time.Sleep(50 * time.Millisecond)
	if n, err := ask(web); err != nil || n != "a" {
		t.Fatalf("after a bad reload web answered %q, %v", n, err)
	}
	write(base + fmt.Sprintf("  - name: api\n    listen: %s\n    servers: [{address: %s}]\n", api, b))
	reload <- syscall.SIGHUP
	eventually(t, "the reloaded api service serves", func() error {
		n, err := ask(api)
		if err == nil && n != "b" {
			err = fmt.Errorf("answered %q", n)
		}
		return err
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v", err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("run did not return after the stop signal")
	}
	if st, err := os.Stat(snap); err != nil || st.Size() == 0 {
		t.Errorf("no snapshot written on stop: %v", err)
	}
	if _, err := net.DialTimeout("tcp", web, time.Second); err == nil {
		t.Error("still listening after stop")
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.yaml")
	os.WriteFile(path, []byte("services: []\n"), 0o600)
	err := run(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), path, nil, nil, proxy.Options{})
	if err == nil || !strings.Contains(err.Error(), "t.yaml") {
		t.Fatalf("run with a bad config: %v", err)
	}
}

func TestRunLogSettingsFromConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.yaml")
	os.WriteFile(path, []byte("log: {format: json, level: warn}\nservices:\n  - name: web\n    listen: "+freeAddr(t)+"\n    servers: [{address: 127.0.0.1:1}]\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--config", path}, `"level":"WARN"`},
		{[]string{"--log-format", "text", "run", "--config", path}, "level=WARN"},
	} {
		var errOut strings.Builder
		app := newApp(io.Discard, &errOut)
		for _, c := range app.Commands {
			if c.Name == "run" {
				c.Action = func(c *cli.Context) error {
					l, err := runLogger(c)
					if err != nil {
						return err
					}
					l.Info("hidden")
					l.Warn("shown")
					return nil
				}
			}
		}
		if err := app.Run(append([]string{"tether"}, tc.args...)); err != nil {
			t.Fatal(err)
		}
		if s := errOut.String(); !strings.Contains(s, tc.want) || strings.Contains(s, "hidden") {
			t.Errorf("%v logged %q, want %s and no info line", tc.args, s, tc.want)
		}
	}
}

func TestNftShowAndFlush(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.yaml")
	os.WriteFile(path, []byte("marks:\n  - name: web\n    mark: 1\n    addresses: [198.18.0.10]\n    ports: [80, 443]\nservices:\n  - name: web\n    fwmark: 1\n    servers: [{address: 198.19.0.11}]\n"), 0o600)
	out, _, err := runCLI(t, "nft", "show", "--config", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"table inet tether {", "elements = { 80, 443 }", "tproxy ip to :20080"} {
		if !strings.Contains(out, want) {
			t.Errorf("nft show lacks %q:\n%s", want, out)
		}
	}
	// A class of this host's addresses is listened for, and shown so.
	local := filepath.Join(t.TempDir(), "l.yaml")
	os.WriteFile(local, []byte("marks:\n  - name: lo\n    mark: 2\n    addresses: [127.0.0.1]\n    ports: [8080, 8443]\nservices:\n  - name: lo\n    fwmark: 2\n    servers: [{address: 127.0.0.2}]\n"), 0o600)
	out, _, err = runCLI(t, "nft", "show", "--config", local)
	if err != nil {
		t.Fatal(err)
	}
	if want := `# class "lo": tether listens on 127.0.0.1:8080 127.0.0.1:8443`; !strings.Contains(out, want) || strings.Contains(out, "tproxy ip") {
		t.Errorf("nft show of a local class lacks %q or has a tproxy rule:\n%s", want, out)
	}
	noMarks := filepath.Join(t.TempDir(), "n.yaml")
	os.WriteFile(noMarks, []byte("services:\n  - name: web\n    listen: 127.0.0.1:80\n    servers: [{address: 127.0.0.2:80}]\n"), 0o600)
	if _, _, err := runCLI(t, "nft", "show", "--config", noMarks); err == nil || !strings.Contains(err.Error(), "no marks") {
		t.Errorf("nft show without marks: %v", err)
	}
	// The same mark served by the director: marked, not TPROXYed, and the
	// director's table with the servers' choice marks.
	director := filepath.Join(t.TempDir(), "d.yaml")
	os.WriteFile(director, []byte("mode: director\nmarks:\n  - name: web\n    mark: 1\n    addresses: [198.18.0.10]\n    ports: [80, 443]\nservices:\n  - name: web\n    fwmark: 1\n    servers: [{address: 198.19.0.11}, {address: 198.19.0.12}]\n"), 0o600)
	out, _, err = runCLI(t, "nft", "show", "--config", director)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"table inet tether {", "table ip tether {", "0x7e000001 : 198.19.0.12", "ct state new meta mark 0x00000001 meta mark != @choices queue num 0", "dnat ip to meta mark map @dnat_addr"} {
		if !strings.Contains(out, want) {
			t.Errorf("nft show (director) lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "tproxy") {
		t.Errorf("a director class is TPROXYed:\n%s", out)
	}
}
