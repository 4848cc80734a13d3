package admin

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

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
