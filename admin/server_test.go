package admin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetherlb/tether/api"
)

// fake is a Backend that records what it was asked.
type fake struct{ removed []api.TemplateFilter }

func (f *fake) Status() []api.ServiceStatus { return []api.ServiceStatus{{Name: "web"}} }
func (f *fake) SetServer(service, server string, ch api.ServerChange) error {
	if service != "web" {
		return errors.New("service \"" + service + "\": " + api.ErrNotFound.Error())
	}
	return nil
}
func (f *fake) Templates(api.TemplateFilter) ([]api.TemplateStatus, error) { return nil, nil }
func (f *fake) Cluster() (api.ClusterStatus, error) {
	return api.ClusterStatus{}, fmt.Errorf("no cluster: %w", api.ErrNotFound)
}
func (f *fake) RemoveTemplates(fl api.TemplateFilter) (int, error) {
	f.removed = append(f.removed, fl)
	return 3, nil
}

// Requests the API must refuse, and what it says; readiness follows
// SetReady.
func TestAPIRefusals(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	b := &fake{}
	s, err := Start(Options{Backend: b, Socket: sock, Reload: func() (api.ReloadResult, error) { return api.ReloadResult{}, errors.New("t.yaml:3: bad") }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Start(Options{Backend: b, Socket: sock}); err == nil || !strings.Contains(err.Error(), "another process (a running tether?) answers on it") {
		t.Errorf("a second tether on the same socket: %v", err)
	}
	if _, err := Start(Options{Backend: b, Listen: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "needs a token") {
		t.Errorf("TCP without a token: %v", err)
	}
	c := NewClient(sock, "", "")
	ctx := context.Background()
	if _, err := c.RemoveTemplates(ctx, api.TemplateFilter{}, false); err == nil || !strings.Contains(err.Error(), "say which templates") {
		t.Errorf("DELETE without a filter: %v", err)
	}
	if n, err := c.RemoveTemplates(ctx, api.TemplateFilter{}, true); err != nil || n != 3 || len(b.removed) != 1 {
		t.Errorf("DELETE all=true: %d, %v", n, err)
	}
	if _, err := c.Reload(ctx); err == nil || !strings.Contains(err.Error(), "t.yaml:3: bad (HTTP 422)") {
		t.Errorf("a failed reload: %v", err)
	}
	var apiErr *APIError
	if err := c.do(ctx, http.MethodPost, "/v1/server", map[string]any{"service": "web", "server": "x", "wieght": 2}, nil); !errors.As(err, &apiErr) || apiErr.Status != 400 || !strings.Contains(apiErr.Msg, `unknown field "wieght"`) {
		t.Errorf("a misspelt field: %v", err)
	}
	if err := c.do(ctx, http.MethodGet, "/readyz", nil, nil); !errors.As(err, &apiErr) || apiErr.Status != 503 {
		t.Errorf("readyz before ready: %v", err)
	}
	s.SetReady(true)
	for _, path := range []string{"/healthz", "/readyz"} {
		if err := c.do(ctx, http.MethodGet, path, nil, nil); err != nil { // nil: HTTP 200
			t.Errorf("%s once ready: %v", path, err)
		}
	}
	if err := c.do(ctx, http.MethodGet, "/metrics", nil, nil); !errors.As(err, &apiErr) || apiErr.Status != 404 || !strings.Contains(apiErr.Msg, "metrics are off") {
		t.Errorf("metrics when off: %v", err)
	}
}

// The TCP API bounds what a client without the token can hold: its
// keep-alive connection is closed after the refusal (it used to stay 60 s),
// and connections past MaxTCPConns are closed at once (there was no cap).
func TestTCPUnauthenticatedIsBounded(t *testing.T) {
	s, err := Start(Options{Backend: &fake{}, Listen: "127.0.0.1:0", Token: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := s.Addr.String()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /v1/services HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: %v, %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("after a refused token the connection stays open (read: %v)", err)
	}

	// MaxTCPConns silent connections, then one more: it is closed at once.
	var held []net.Conn
	defer func() {
		for _, h := range held {
			h.Close()
		}
	}()
	for range MaxTCPConns {
		h, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, h)
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection %d past the cap of %d: read %v, want it closed", MaxTCPConns+1, MaxTCPConns, err)
	}
	// One slot freed: the token holder gets in.
	held[0].Close()
	cl := NewClient("", "http://"+addr, "s3cret")
	var svcs []api.ServiceStatus
	for deadline := time.Now().Add(5 * time.Second); ; {
		if svcs, err = cl.Services(context.Background()); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil || len(svcs) != 1 {
		t.Errorf("with a slot free, the token holder: %v, %v", svcs, err)
	}
}
