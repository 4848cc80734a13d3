package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/proxy"
)

// dialFrom connects from src and reads the server's name; the connection
// is left open.
func dialFrom(t *testing.T, src, addr string) (net.Conn, string) {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(2 * time.Second))
	name, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return c, strings.TrimSpace(name)
}

// Every admin command against a running tether, through the socket and
// through TCP with the token, with its output checked.
func TestAdminCommands(t *testing.T) {
	dir := t.TempDir()
	path, sock, tokenFile := filepath.Join(dir, "tether.yaml"), filepath.Join(dir, "admin.sock"), filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600)
	a, b := nameServer(t, "a"), nameServer(t, "b")
	web, adminTCP := freeAddr(t), freeAddr(t)
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := fmt.Sprintf(`admin: {socket: %s, listen: %s, token_file: %s}
metrics: {enabled: true}
services:
  - name: web
    listen: %s
    scheduler: rr
    persistence: {timeout: 300}
    servers: [{address: %s}, {address: %s}]
`, sock, adminTCP, tokenFile, web, a, b)
	write(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), path, nil, nil, proxy.Options{})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	eventually(t, "readyz", func() error {
		r, err := http.Get("http://" + adminTCP + "/readyz")
		if err != nil {
			return err
		}
		r.Body.Close()
		if r.StatusCode != 200 {
			return fmt.Errorf("status %d", r.StatusCode)
		}
		return nil
	})
	ls := func(args ...string) string {
		t.Helper()
		out, _, err := runCLI(t, append(args, "--admin", sock)...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out
	}
	// Four clients; one connection each stays open.
	owner := map[string]string{}
	for i := 1; i <= 4; i++ {
		src := fmt.Sprintf("127.3.0.%d", i)
		c, name := dialFrom(t, src, web)
		defer c.Close()
		owner[src] = name
	}
	servers := map[string]string{"a": a, "b": b}

	// --config finds the socket in the file tether runs with.
	if out, _, err := runCLI(t, "ls", "--config", path); err != nil || !strings.Contains(out, "name web") {
		t.Errorf("ls --config: %v\n%s", err, out)
	}
	out := ls("ls")
	for _, want := range []string{
		"Prot LocalAddress:Port Scheduler Flags",
		"  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn State",
		"TCP  " + web + " rr persistent 300 name web\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ls lacks %q:\n%s", want, out)
		}
	}
	for _, srv := range []string{a, b} {
		if !regexp.MustCompile(`  -> ` + regexp.QuoteMeta(srv) + ` +Proxy +1 +2 +0 +up\n`).MatchString(out) {
			t.Errorf("ls lacks %s with weight 1, 2 active, 0 inactive, up:\n%s", srv, out)
		}
	}
	var svcs []api.ServiceStatus
	if err := json.Unmarshal([]byte(ls("ls", "--json")), &svcs); err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 || svcs[0].Name != "web" || svcs[0].Templates != 4 || len(svcs[0].Servers) != 2 || svcs[0].Servers[0].Conns != 2 {
		t.Errorf("ls --json: %+v, want web with 4 templates and 2 connections on each server", svcs)
	}
	if out := ls("ls", "--stats"); !regexp.MustCompile(`TCP  ` + regexp.QuoteMeta(web) + ` +4 +0 +\d+`).MatchString(out) {
		t.Errorf("ls --stats lacks web's 4 connections:\n%s", out)
	}
	if out := ls("ls", "--rate", "--interval", "100ms"); !strings.Contains(out, "CPS    InBPS   OutBPS") || !strings.Contains(out, "TCP  "+web) {
		t.Errorf("ls --rate:\n%s", out)
	}

	out = ls("affinity", "ls", "--service", "web")
	for src, name := range owner {
		if !regexp.MustCompile(`web +` + regexp.QuoteMeta(src) + `/32 +` + regexp.QuoteMeta(servers[name]) + ` +1 +05:00`).MatchString(out) {
			t.Errorf("affinity ls lacks %s on %s with 1 connection and 05:00 left:\n%s", src, name, out)
		}
	}
	if out := ls("affinity", "ls", "--client", "127.3.0.1"); strings.Count(out, "\n") != 2 {
		t.Errorf("affinity ls --client: want a header and one row:\n%s", out)
	}
	if out := ls("affinity", "rm", "--client", "127.3.0.1"); out != "removed 1 templates\n" {
		t.Errorf("affinity rm --client: %q", out)
	}
	if out := ls("affinity", "ls", "--client", "127.3.0.1"); strings.Count(out, "\n") != 1 {
		t.Errorf("the removed template is still listed:\n%s", out)
	}
	if _, _, err := runCLI(t, "affinity", "rm", "--admin", sock); err == nil || !strings.Contains(err.Error(), "--all") {
		t.Errorf("affinity rm without a filter: %v, want a refusal naming --all", err)
	}
	onB := 0
	for src, name := range owner {
		if name == "b" && src != "127.3.0.1" {
			onB++
		}
	}
	if out := ls("affinity", "rm", "--server", b); out != fmt.Sprintf("removed %d templates\n", onB) {
		t.Errorf("affinity rm --server: %q, want %d removed", out, onB)
	}

	if out := ls("server", "set", "web", b, "--drain"); out != "web "+b+": done\n" {
		t.Errorf("server set --drain: %q", out)
	}
	if out := ls("ls"); !regexp.MustCompile(regexp.QuoteMeta(b) + ` +Proxy +0 +2 +0 +drain`).MatchString(out) {
		t.Errorf("ls after --drain:\n%s", out)
	}
	ls("server", "set", "web", b, "--weight", "5")
	if out := ls("ls"); !regexp.MustCompile(regexp.QuoteMeta(b) + ` +Proxy +5 +2 +0 +up`).MatchString(out) {
		t.Errorf("ls after --weight 5:\n%s", out)
	}
	if _, _, err := runCLI(t, "server", "set", "web", b, "--up", "--sideways", "--admin", sock); err == nil || !strings.Contains(err.Error(), "flag provided but not defined: -sideways") {
		t.Errorf("server set with a bad flag: %v", err)
	}
	if _, _, err := runCLI(t, "server", "set", "web", "127.0.0.1:1", "--up", "--admin", sock); err == nil || !strings.Contains(err.Error(), "server 127.0.0.1:1 of service web: not found") {
		t.Errorf("server set on an unknown server: %v", err)
	}

	write("services: [oops\n")
	if _, _, err := runCLI(t, "reload", "--admin", sock); err == nil || !strings.Contains(err.Error(), "tether.yaml:1") {
		t.Errorf("reload of a bad file: %v, want its file:line error", err)
	}
	if out := ls("ls"); !strings.Contains(out, "name web") {
		t.Errorf("a refused reload lost the running service:\n%s", out)
	}
	write(cfg)
	if out := ls("reload"); out != "reloaded: 1 services\n" {
		t.Errorf("reload: %q", out)
	}
	if out := ls("ls"); !regexp.MustCompile(regexp.QuoteMeta(b) + ` +Proxy +1 `).MatchString(out) {
		t.Errorf("server set lasts until a reload, but weight 5 survived it:\n%s", out)
	}
	// A setting only a restart applies is reported, not silently dropped.
	write("affinity: {capacity: 5000}\n" + cfg)
	if out := ls("reload"); out != "reloaded: 1 services\nchanged, and applied only at the next start: affinity.capacity\n" {
		t.Errorf("reload with a new capacity: %q", out)
	}

	// TCP: the token opens /v1, a wrong one is refused; the probes and
	// metrics need none.
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("guess"), 0o600)
	url := "http://" + adminTCP
	if out, _, err := runCLI(t, "ls", "--admin-url", url, "--token-file", tokenFile); err != nil || !strings.Contains(out, "name web") {
		t.Errorf("ls over TCP with the token: %v\n%s", err, out)
	}
	if _, _, err := runCLI(t, "ls", "--admin-url", url, "--token-file", bad); err == nil || !strings.Contains(err.Error(), "missing or wrong bearer token (HTTP 401)") {
		t.Errorf("ls over TCP with a wrong token: %v", err)
	}
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready", "/metrics": `tether_connections_accepted{service="web"} 4`} {
		r, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, want 200 with %q:\n%.300s", path, r.StatusCode, want, body)
		}
	}
}

// The admin socket refuses a user other than root: by its mode (0600),
// and, if its mode is opened by hand, by the peer check.
func TestAdminSocketRefusesOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI runs as root")
		}
		t.Skip("needs root to run a process as another user")
	}
	dir := t.TempDir()
	// Let nobody reach the socket and the binary: only the socket's own
	// mode and the peer check stand in the way.
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "tether")
	exe, _ := os.ReadFile(os.Args[0])
	if err := os.WriteFile(bin, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	sock, path := filepath.Join(dir, "admin.sock"), filepath.Join(dir, "tether.yaml")
	os.WriteFile(path, []byte(fmt.Sprintf("admin: {socket: %s}\nservices:\n  - name: web\n    listen: %s\n    servers: [{address: 127.0.0.1:1}]\n", sock, freeAddr(t))), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), path, nil, nil, proxy.Options{})
	}()
	defer func() { cancel(); <-done }()
	eventually(t, "socket", func() error { _, _, err := runCLI(t, "ls", "--admin", sock); return err })
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v (%v), want 0600", st.Mode(), err)
	}
	asNobody := func() (string, error) {
		cmd := exec.Command(bin, "ls", "--admin", sock)
		cmd.Env = append(os.Environ(), "TETHER_TEST_MAIN=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := asNobody(); err == nil || !strings.Contains(out, "refused: the admin socket is for root") {
		t.Errorf("nobody through the 0600 socket: %v\n%s", err, out)
	}
	os.Chmod(sock, 0o666)
	if out, err := asNobody(); err == nil || !strings.Contains(out, "refused: the admin socket is for root, and uid 65534 is not (HTTP 403)") {
		t.Errorf("nobody through a socket opened to all: %v\n%s", err, out)
	}
	if _, _, err := runCLI(t, "ls", "--admin", sock); err != nil {
		t.Errorf("root was refused: %v", err)
	}
	if _, _, err := runCLI(t, "ls", "--admin", filepath.Join(dir, "none.sock")); err == nil || !strings.Contains(err.Error(), "no tether is running there") {
		t.Errorf("ls on a missing socket: %v", err)
	}
}

// --rate: the difference of two listings over the window, per server and
// summed per service; a server that appeared meanwhile is left out.
func TestRateOf(t *testing.T) {
	svc := func(servers ...api.ServerStatus) []api.ServiceStatus {
		return []api.ServiceStatus{{Name: "web", Protocol: "tcp", Listen: "198.18.0.10:80", Servers: servers}}
	}
	before := svc(api.ServerStatus{Address: "a", Conns: 10, BytesIn: 1000, BytesOut: 5000})
	after := svc(api.ServerStatus{Address: "a", Conns: 30, BytesIn: 3000, BytesOut: 9000}, api.ServerStatus{Address: "new", Conns: 7})
	got := rateOf(before, after, 2*time.Second)
	want := Rate{Name: "web", Address: "198.18.0.10:80", Prot: "TCP", CPS: 10, InBPS: 1000, OutBPS: 2000,
		Servers: []Rate{{Address: "a", Prot: "TCP", CPS: 10, InBPS: 1000, OutBPS: 2000}}}
	if len(got) != 1 || fmt.Sprint(got[0]) != fmt.Sprint(want) {
		t.Errorf("rateOf = %+v, want %+v", got, want)
	}
	if h := human(1234567); h != "1.2M" {
		t.Errorf("human(1234567) = %q", h)
	}
}

// tether ls says which addresses a mark service's class is listened on.
func TestFlagsShowListeners(t *testing.T) {
	s := api.ServiceStatus{Name: "web", Fwmark: 3, Listeners: []string{"198.18.0.10:80", "198.18.0.10:443"}}
	if got, want := flags(s), "listens 198.18.0.10:80,198.18.0.10:443 name web"; got != want {
		t.Errorf("flags %q, want %q", got, want)
	}
	s.Listeners = nil
	if got := flags(s); got != "name web" {
		t.Errorf("flags of a TPROXYed class %q, want only its name", got)
	}
}
