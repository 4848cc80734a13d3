package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	metrics "github.com/hashicorp/go-metrics"
	prommetrics "github.com/hashicorp/go-metrics/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tetherlb/tether/admin"
	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/proxy"
	"github.com/urfave/cli/v2"
)

var configFlag = &cli.StringFlag{
	Name: "config", Aliases: []string{"c"}, Usage: "configuration file",
	EnvVars: []string{"TETHER_CONFIG"}, Required: true,
}

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:  "check",
		Usage: "validate a configuration file and print it with every default filled in",
		Description: "Like haproxy -c and nginx -t: exit 0 and the normalized configuration,\n" +
			"or exit 1 and every error with its file, line and key.",
		Flags: []cli.Flag{configFlag},
		Action: func(c *cli.Context) error {
			f, err := config.Load(c.String("config"))
			if err != nil {
				return cli.Exit(err.Error(), 1)
			}
			out, err := f.Marshal()
			if err != nil {
				return err
			}
			_, err = c.App.Writer.Write(out)
			return err
		},
	}
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "run the virtual services of a configuration file",
		Description: "SIGHUP (or, with --watch, a change of the file) reloads the file (a bad file is\n" +
			"logged and the running configuration stays); SIGTERM and SIGINT stop accepting, drain open connections for\n" +
			"drain_timeout and write the persistence snapshot.",
		Flags: []cli.Flag{configFlag,
			&cli.StringFlag{Name: "cpuprofile", Hidden: true, Usage: "write a CPU profile of the run to this file"},
			&cli.BoolFlag{Name: "set-sysctls", Usage: "set the sysctls the data paths want (net.ipv4.tcp_fwmark_accept=1 with marks) instead of only naming them"},
			&cli.BoolFlag{Name: "watch", Usage: "reload when the config file changes, as SIGHUP does (a Kubernetes ConfigMap's symlink swap included)"},
			&cli.IntFlag{Name: "tcp-loops", Usage: "event loops serving TCP connections: 0, one per CPU; -1, a goroutine per connection instead (to compare)", EnvVars: []string{"TETHER_TCP_LOOPS"}},
		},
		Action: func(c *cli.Context) error {
			if path := c.String("cpuprofile"); path != "" {
				f, err := os.Create(path)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			log, err := runLogger(c)
			if err != nil {
				return cli.Exit(err.Error(), 1)
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			if c.Bool("watch") {
				wctx, cancel := context.WithCancel(ctx)
				watched := make(chan error, 1)
				go func() { watched <- watchConfig(wctx, log, c.String("config"), hup) }()
				defer func() { cancel(); <-watched }()
			}
			if n := c.Int("tcp-loops"); n < -1 {
				return cli.Exit(fmt.Sprintf("--tcp-loops %d: want -1 (no loops), 0 (one per CPU) or a count", n), 1)
			}
			return run(ctx, log, c.String("config"), hup, proxy.Options{SetSysctls: c.Bool("set-sysctls"), TCPLoops: c.Int("tcp-loops")})
		},
	}
}

// runLogger is the logger of `tether run`: the config file's log settings,
// unless a flag or its environment variable says otherwise.
func runLogger(c *cli.Context) (*slog.Logger, error) {
	format, level := c.String("log-format"), c.String("log-level")
	if cfg, err := config.Load(c.String("config")); err == nil {
		if !c.IsSet("log-format") {
			format = cfg.Log.Format
		}
		if !c.IsSet("log-level") {
			level = cfg.Log.Level
		}
	}
	return newLogger(c.App.ErrWriter, format, level)
}

// run is `tether run`: it returns when ctx ends, after draining.
func run(ctx context.Context, log *slog.Logger, path string, reload <-chan os.Signal, opts proxy.Options) error {
	cfg, err := config.Load(path)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	var ready atomic.Bool // /readyz of the metrics listener, as the admin API's
	m, promHandler, stopMetrics, err := newMetrics(cfg.Metrics, log, &ready)
	if err != nil {
		return err
	}
	defer m.Shutdown()
	defer stopMetrics()
	opts.Logger = log
	if promHandler != nil {
		opts.Metrics = m // off, the data path skips counting altogether
	}
	p := proxy.New(cfg, opts)

	// The admin API's reloads are done by this loop, as SIGHUP's are.
	reloads := make(chan chan reloadResult)
	adm, err := startAdmin(cfg.Admin, admin.Options{Backend: p, Metrics: promHandler, Log: log,
		Reload: func() (api.ReloadResult, error) {
			res := make(chan reloadResult, 1)
			select {
			case reloads <- res:
			case <-ctx.Done():
				return api.ReloadResult{}, errors.New("tether is stopping")
			}
			r := <-res
			return r.res, r.err
		}})
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	defer adm.Close()

	if err := p.Start(); err != nil {
		return err
	}
	adm.SetReady(true)
	ready.Store(true)
	p.EmitMetrics() // gauges from the first scrape on
	log.Info("tether running", "config", path, "services", len(cfg.Services), "version", version)
	notify := func(state string) {
		if err := sdNotify(state); err != nil {
			log.Warn("could not tell the service manager", "state", state, "err", err)
		}
	}
	notify(fmt.Sprintf("READY=1\nSTATUS=serving %d services", len(cfg.Services)))

	doReload := func() (api.ReloadResult, error) {
		notify(reloading())
		defer notify("READY=1") // a refused reload keeps the running configuration: ready all the same
		next, err := config.Load(path)
		if err != nil {
			log.Error("reload refused; the running configuration stays", "err", err)
			return api.ReloadResult{}, err
		}
		if err := p.Reload(next); err != nil {
			log.Error("reload failed; the running configuration stays", "err", err)
			return api.ReloadResult{}, err
		}
		res := api.ReloadResult{Services: len(next.Services), RestartNeeded: config.RestartNeeded(cfg, next)}
		if len(res.RestartNeeded) > 0 {
			log.Warn("changed settings that take effect only at the next start", "settings", res.RestartNeeded)
		}
		cfg.DrainTimeout = next.DrainTimeout
		log.Info("reloaded", "config", path, "services", len(next.Services))
		return res, nil
	}
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			notify("STOPPING=1")
			adm.SetReady(false)
			ready.Store(false)
			log.Info("stopping: draining open connections", "deadline", cfg.DrainTimeout.D())
			dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout.D())
			defer cancel()
			return p.Shutdown(dctx)
		case <-reload:
			doReload()
		case res := <-reloads:
			r, err := doReload()
			res <- reloadResult{r, err}
		case <-tick.C:
			p.EmitMetrics()
		}
	}
}

type reloadResult struct {
	res api.ReloadResult
	err error
}

// startAdmin starts the admin API the config asks for.
func startAdmin(c config.Admin, o admin.Options) (*admin.Server, error) {
	switch c.Socket {
	case "off":
	case "":
		o.Socket = admin.DefaultSocket()
	default:
		o.Socket = c.Socket
	}
	if c.Listen != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("admin.token_file: %w", err)
		}
		if st, err := os.Stat(c.TokenFile); err == nil && st.Mode().Perm()&0o044 != 0 {
			o.Log.Warn("admin.token_file can be read by other users; chmod 600 it", "path", c.TokenFile, "mode", st.Mode().Perm())
		}
		if o.Token = strings.TrimSpace(string(b)); o.Token == "" {
			return nil, fmt.Errorf("admin.token_file %s: empty", c.TokenFile)
		}
		o.Listen = c.Listen
	}
	return admin.Start(o)
}

// newMetrics returns the go-metrics sink tether reports to, the
// Prometheus handler of what it collects (nil when metrics are off) and,
// with a listen address, serves it at /metrics; stop ends that. The
// address is bound before it returns, so a taken port is a start-up
// error, not a log line.
// newMetrics sets up go-metrics and, with metrics.listen, serves /metrics
// there, with /healthz and /readyz (ready) for probes that have no admin
// token, as a Kubernetes pod's.
func newMetrics(mc config.Metrics, log *slog.Logger, ready *atomic.Bool) (m *metrics.Metrics, h http.Handler, stop func(), err error) {
	cfg := metrics.DefaultConfig("tether")
	cfg.EnableHostname, cfg.EnableHostnameLabel, cfg.EnableServiceLabel = false, false, false
	cfg.EnableRuntimeMetrics = false
	if mc.Listen == "" && !mc.Enabled {
		// Off: the data path's counters cost nothing.
		m, err := metrics.New(cfg, &metrics.BlackholeSink{})
		return m, nil, func() {}, err
	}
	reg := prometheus.NewRegistry()
	sink, err := prommetrics.NewPrometheusSinkFrom(prommetrics.PrometheusOpts{Registerer: reg, Name: "tether"})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("metrics: %w", err)
	}
	if m, err = metrics.New(cfg, sink); err != nil {
		return nil, nil, nil, err
	}
	h = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	if mc.Listen == "" {
		return m, h, func() {}, nil
	}
	ln, err := net.Listen("tcp", mc.Listen)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("metrics.listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready: listeners, rules or snapshot not in place, or stopping", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "err", err)
		}
	}()
	log.Info("metrics served", "url", "http://"+ln.Addr().String()+"/metrics")
	return m, h, func() { srv.Close(); <-done }, nil
}
