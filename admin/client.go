package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"

	"github.com/tetherlb/tether/api"
)

// Client talks to a running tether's admin API.
type Client struct {
	hc    *http.Client
	base  string // http://host:port, or http://tether for the socket
	token string
	where string // for errors: the socket path or the URL
}

// NewClient returns a client of the API at baseURL (http://host:port,
// with token) or, when baseURL is empty, on the unix socket.
func NewClient(socket, baseURL, token string) *Client {
	if baseURL != "" {
		return &Client{hc: &http.Client{}, base: strings.TrimSuffix(baseURL, "/"), token: token, where: baseURL}
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &Client{hc: &http.Client{Transport: tr}, base: "http://tether", where: "admin socket " + socket}
}

// Services lists the services and their servers.
func (c *Client) Services(ctx context.Context) ([]api.ServiceStatus, error) {
	var out []api.ServiceStatus
	return out, c.do(ctx, http.MethodGet, "/v1/services", nil, &out)
}

// Ready returns nil once the instance says ready (/readyz): listening,
// rules in place and, in a cluster, its peers' templates in.
func (c *Client) Ready(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/readyz", nil, nil)
}

// Cluster is the cluster as the instance sees it.
func (c *Client) Cluster(ctx context.Context) (api.ClusterStatus, error) {
	var out api.ClusterStatus
	return out, c.do(ctx, http.MethodGet, "/v1/cluster", nil, &out)
}

// Templates lists the persistence templates f selects.
func (c *Client) Templates(ctx context.Context, f api.TemplateFilter) ([]api.TemplateStatus, error) {
	var out []api.TemplateStatus
	return out, c.do(ctx, http.MethodGet, "/v1/affinity?"+query(f, false).Encode(), nil, &out)
}

// RemoveTemplates removes the templates f selects (every one with all)
// and returns how many went.
func (c *Client) RemoveTemplates(ctx context.Context, f api.TemplateFilter, all bool) (int, error) {
	var out struct{ Removed int }
	err := c.do(ctx, http.MethodDelete, "/v1/affinity?"+query(f, all).Encode(), nil, &out)
	return out.Removed, err
}

// SetServer changes a server at once.
func (c *Client) SetServer(ctx context.Context, req api.ServerRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/server", req, nil)
}

// Reload reloads the configuration file and says what it did.
func (c *Client) Reload(ctx context.Context) (api.ReloadResult, error) {
	var out api.ReloadResult
	err := c.do(ctx, http.MethodPost, "/v1/reload", nil, &out)
	return out, err
}

func query(f api.TemplateFilter, all bool) url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"service": f.Service, "client": f.Client, "server": f.Server} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if all {
		q.Set("all", "true")
	}
	return q
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.dialError(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s: %w", c.where, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e api.ErrorBody
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return &APIError{Status: resp.StatusCode, Msg: e.Error}
		}
		return &APIError{Status: resp.StatusCode, Msg: strings.TrimSpace(string(b))}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s: unreadable answer: %w", c.where, err)
	}
	return nil
}

// dialError says plainly why the API could not be reached.
func (c *Client) dialError(err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%s: no tether is running there (%w)", c.where, err)
	case errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF):
		return fmt.Errorf("%s: refused: the admin socket is for root (%w)", c.where, err)
	}
	return fmt.Errorf("%s: %w", c.where, err)
}

// APIError is an error the API answered with.
type APIError struct {
	Status int
	Msg    string
}

func (e *APIError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.Msg, e.Status) }
