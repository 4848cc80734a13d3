package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/internal/ratelog"
)

// DefaultSocket is where the admin socket is unless the config says
// otherwise: /run/tether/admin.sock for root; for another user, who
// cannot write /run, $XDG_RUNTIME_DIR/tether/admin.sock, or
// /tmp/tether-UID/admin.sock without it.
func DefaultSocket() string {
	if os.Geteuid() == 0 {
		return "/run/tether/admin.sock"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "tether", "admin.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("tether-%d", os.Geteuid()), "admin.sock")
}

// Backend is what the API reads and changes: a running proxy.
type Backend interface {
	Status() []api.ServiceStatus
	SetServer(service, server string, ch api.ServerChange) error
	Templates(f api.TemplateFilter) ([]api.TemplateStatus, error)
	RemoveTemplates(f api.TemplateFilter) (int, error)
	// Cluster is the cluster as this instance sees it; an error wrapping
	// api.ErrNotFound when it is in none.
	Cluster() (api.ClusterStatus, error)
}

// Options configure a Server.
type Options struct {
	Backend Backend
	// Reload reloads the configuration file as SIGHUP does and returns
	// what it did, or the error (config errors included).
	Reload func() (api.ReloadResult, error)
	// Metrics serves /metrics; nil answers 404 (metrics are off).
	Metrics http.Handler
	Log     *slog.Logger
	// Socket is the unix socket's path; empty: no socket.
	Socket string
	// Listen is a TCP address; Token must then be set.
	Listen string
	Token  string
}

// Server serves the admin API until Close.
type Server struct {
	o     Options
	rlog  *ratelog.Logger
	ready atomic.Bool
	srvs  []*http.Server
	wg    sync.WaitGroup
	// Addr is the TCP listener's address, once listening.
	Addr net.Addr
}

// Start listens on the socket and the TCP address and serves. A socket
// file left by a dead tether is replaced; one a live process answers on
// is an error, as is a TCP address without a token.
func Start(o Options) (*Server, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{o: o, rlog: ratelog.New(o.Log, time.Second)}
	if o.Socket != "" {
		ln, err := listenSocket(o.Socket)
		if err != nil {
			return nil, err
		}
		s.serve(ln, s.peerCheck(s.handler(false)))
		o.Log.Info("admin API on a unix socket", "path", o.Socket)
	}
	if o.Listen != "" {
		if o.Token == "" {
			s.Close()
			return nil, errors.New("admin.listen needs a token (admin.token_file): the TCP API is not open to anyone")
		}
		ln, err := net.Listen("tcp", o.Listen)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("admin.listen: %w", err)
		}
		s.Addr = ln.Addr()
		s.serve(&capped{Listener: ln, max: MaxTCPConns, refused: func() {
			s.rlog.Log(slog.LevelWarn, "admin API: a TCP connection past the cap closed", "max", MaxTCPConns)
		}}, s.handler(true))
		o.Log.Info("admin API on TCP, bearer token required", "addr", ln.Addr())
	}
	return s, nil
}

// SetReady marks the process ready (/readyz answers 200) or not.
func (s *Server) SetReady(r bool) { s.ready.Store(r) }

// Close stops serving and removes the socket file.
func (s *Server) Close() {
	for _, h := range s.srvs {
		h.Close()
	}
	s.wg.Wait()
	if s.o.Socket != "" {
		os.Remove(s.o.Socket)
	}
}

func (s *Server) serve(ln net.Listener, h http.Handler) {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 10 * time.Second, ConnContext: peerContext,
		ErrorLog: log.New(logWriter{s.rlog}, "", 0)}
	s.srvs = append(s.srvs, hs)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.o.Log.Error("admin API stopped", "err", err)
		}
	}()
}

// listenSocket makes the socket's directory (0700) and the socket (0600).
func listenSocket(path string) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	// A directory someone else owns or may write to (one planted in
	// /tmp) could hold a socket that is not ours.
	if st, err := os.Stat(dir); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && (int(sys.Uid) != os.Geteuid() && sys.Uid != 0 || st.Mode().Perm()&0o022 != 0 && st.Mode()&os.ModeSticky == 0) {
			return nil, fmt.Errorf("admin socket: directory %s is owned or writable by another user; give admin.socket a directory of tether's own", dir)
		}
	}
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("admin socket %s: another process (a running tether?) answers on it; give this one admin.socket", path)
		}
		os.Remove(path) // left by a tether that died
	}
	// Between bind and chmod another user could connect; the peer check
	// of every connection refuses them anyway.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	ln.SetUnlinkOnClose(false) // Close removes it, after the servers stop
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return ln, nil
}

type peerKey struct{}

// peerContext records the uid of a unix socket's peer, for peerCheck.
func peerContext(ctx context.Context, c net.Conn) context.Context {
	uid := -1
	if uc, ok := c.(*net.UnixConn); ok {
		if u, err := peerUID(uc); err == nil {
			uid = u
		}
	}
	return context.WithValue(ctx, peerKey{}, uid)
}

// peerCheck lets through only root and tether's own user on the socket,
// whatever its mode: a socket opened to others by hand does not open the
// API.
func (s *Server) peerCheck(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uid, _ := r.Context().Value(peerKey{}).(int)
		if uid != 0 && uid != os.Geteuid() {
			s.o.Log.Warn("admin socket: request refused", "peer_uid", uid, "path", r.URL.Path)
			writeJSON(w, http.StatusForbidden, api.ErrorBody{Error: fmt.Sprintf("refused: the admin socket is for root, and uid %d is not", uid)})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// handler routes the API; tokened requires the bearer token on /v1.
func (s *Server) handler(tokened bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready: listeners, rules or snapshot not in place, or stopping", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if s.o.Metrics == nil {
			http.Error(w, "metrics are off: set metrics.enabled or metrics.listen", http.StatusNotFound)
			return
		}
		s.o.Metrics.ServeHTTP(w, r)
	})
	v1mux := http.NewServeMux()
	v1mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.o.Backend.Status())
	})
	v1mux.HandleFunc("GET /v1/affinity", func(w http.ResponseWriter, r *http.Request) {
		ts, err := s.o.Backend.Templates(filterOf(r))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, ts)
	})
	v1mux.HandleFunc("DELETE /v1/affinity", func(w http.ResponseWriter, r *http.Request) {
		f := filterOf(r)
		if f == (api.TemplateFilter{}) && r.URL.Query().Get("all") != "true" {
			writeJSON(w, http.StatusBadRequest, api.ErrorBody{Error: "say which templates: service, client or server, or all=true for every one"})
			return
		}
		n, err := s.o.Backend.RemoveTemplates(f)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]int{"removed": n})
	})
	v1mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.o.Backend.Cluster()
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	v1mux.HandleFunc("POST /v1/server", func(w http.ResponseWriter, r *http.Request) {
		var req api.ServerRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, api.ErrorBody{Error: "request body: " + err.Error()})
			return
		}
		if err := s.o.Backend.SetServer(req.Service, req.Server, req.ServerChange); err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	})
	v1mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		res, err := s.o.Reload()
		if err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, api.ErrorBody{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	var v1 http.Handler = v1mux
	if tokened {
		v1 = s.bearer(v1mux)
	}
	mux.Handle("/v1/", v1)
	return mux
}

// bearer lets through requests with the token, in constant time.
func (s *Server) bearer(next http.Handler) http.Handler {
	want := []byte("Bearer " + s.o.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			s.rlog.Log(slog.LevelWarn, "admin API: request without the right token refused", "remote", r.RemoteAddr, "path", r.URL.Path)
			w.Header().Set("WWW-Authenticate", `Bearer realm="tether"`)
			w.Header().Set("Connection", "close") // no keep-alive for whoever lacks the token
			writeJSON(w, http.StatusUnauthorized, api.ErrorBody{Error: "missing or wrong bearer token"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func filterOf(r *http.Request) api.TemplateFilter {
	q := r.URL.Query()
	return api.TemplateFilter{Service: q.Get("service"), Client: q.Get("client"), Server: q.Get("server")}
}

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusBadRequest
	if errors.Is(err, api.ErrNotFound) {
		code = http.StatusNotFound
	}
	writeJSON(w, code, api.ErrorBody{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// MaxTCPConns bounds the admin API's open TCP connections: one past it is
// closed at once. Together with the header and idle timeouts and the close
// after a refused token, no client without the token holds a connection
// for long, and none holds many.
const MaxTCPConns = 64

// capped is a listener that closes connections past max open ones.
type capped struct {
	net.Listener
	max     int
	open    atomic.Int64
	refused func()
}

func (l *capped) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > int64(l.max) {
			l.open.Add(-1)
			c.Close()
			l.refused()
			continue
		}
		return &countedConn{Conn: c, l: l}, nil
	}
}

// countedConn gives its slot back once, on Close.
type countedConn struct {
	net.Conn
	l    *capped
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// logWriter sends net/http's own error lines (accept errors, TLS
// handshakes) through the rate-limited log.
type logWriter struct{ l *ratelog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Log(slog.LevelWarn, "admin API: http server error", "err", strings.TrimSpace(string(p)))
	return len(p), nil
}
