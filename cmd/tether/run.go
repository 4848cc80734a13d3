package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetherlb/tether/admin"
	"github.com/tetherlb/tether/api"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/internal/progpages"
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
			// Until 2026-12 it set net.ipv4.tcp_fwmark_accept=1; mark services
			// need no sysctl since, and the flag stays so that unit files and
			// scripts that pass it still start.
			&cli.BoolFlag{Name: "set-sysctls", Hidden: true, Usage: "no longer needed: mark services need no sysctl"},
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
			if c.Bool("set-sysctls") {
				log.Info("--set-sysctls: nothing to set (mark services are found by original destination, no sysctl needed); the flag can go")
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			// Here, not once serving: a SIGUSR2 that comes while tether
			// starts (a deploy script's upgrade right after a start) waits
			// for it; the Go runtime drops one nobody has asked for.
			usr2 := make(chan os.Signal, 1)
			signal.Notify(usr2, syscall.SIGUSR2)
			defer signal.Stop(usr2)
			if c.Bool("watch") {
				wctx, cancel := context.WithCancel(ctx)
				watched := make(chan error, 1)
				go func() { watched <- watchConfig(wctx, log, c.String("config"), hup) }()
				defer func() { cancel(); <-watched }()
			}
			if _, set := os.LookupEnv("GOGC"); !set {
				// tether's live heap is small and its garbage steady (about
				// 900 bytes a connection): collecting at 25 % growth
				// instead of Go's 100 % keeps about 2.5 MiB off the peak
				// RSS at the same CPU time per connection (README,
				// Performance). GOGC in the environment still rules.
				debug.SetGCPercent(25)
			}
			loops := c.Int("tcp-loops")
			if loops < -1 {
				return cli.Exit(fmt.Sprintf("--tcp-loops %d: want -1 (no loops), 0 (one per CPU) or a count", loops), 1)
			}
			if loops == 0 {
				// One per processor, counted now: setProcs may add a
				// processor that no loop takes (procs.go).
				loops = runtime.GOMAXPROCS(0)
			}
			return run(ctx, log, c.String("config"), hup, usr2, proxy.Options{TCPLoops: loops})
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

// run is `tether run`: it returns when ctx ends, after draining, or
// after a hot upgrade (SIGUSR2) handed its sockets to a new process and
// its own connections drained. reload and upgrade deliver SIGHUP and
// SIGUSR2 (nil: never).
func run(ctx context.Context, log *slog.Logger, path string, reload, upgrade <-chan os.Signal, opts proxy.Options) error {
	dropProgramPages(log, "initialised") // what the package initialisers touched
	cfg, err := config.Load(path)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	// A hot upgrade's new process: the old one's sockets and templates.
	up, err := takeUpgrade()
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	if up != nil {
		opts.Inherit, opts.Restore = up.inherit, up.snapshot
		defer up.close()
	}
	var ready atomic.Bool // /readyz of the metrics listener, as the admin API's
	m, promHandler, err := newMetrics(cfg.Metrics)
	if err != nil {
		return err
	}
	defer m.Shutdown()
	opts.Logger = log
	if promHandler != nil {
		opts.Metrics = m // off, the proxy reports nothing
	}
	p := proxy.New(cfg, opts)
	setProcs(cfg, opts.TCPLoops)
	if promHandler != nil {
		promHandler = emitFirst(p, promHandler)
	}

	// The admin API's reloads are done by this loop, as SIGHUP's are.
	reloads := make(chan chan reloadResult)
	adminOpts := admin.Options{Backend: p, Metrics: promHandler, Log: log,
		Reload: func() (api.ReloadResult, error) {
			res := make(chan reloadResult, 1)
			select {
			case reloads <- res:
			case <-ctx.Done():
				return api.ReloadResult{}, errors.New("tether is stopping")
			}
			r := <-res
			return r.res, r.err
		}}
	// The admin API and the metrics listener start before the proxy, so
	// that a taken address is a start-up error; in an upgrade, after it,
	// once the old process has let them go.
	var adm *admin.Server
	var stopMetrics func()
	listen := func() (err error) {
		if stopMetrics, err = serveMetrics(cfg.Metrics.Listen, promHandler, log, &ready); err != nil {
			return err
		}
		if adm, err = startAdmin(cfg.Admin, adminOpts); err != nil {
			stopMetrics()
			return cli.Exit(err.Error(), 1)
		}
		return nil
	}
	if up == nil {
		if err := listen(); err != nil {
			return err
		}
	}
	if err := p.Start(); err != nil {
		return err
	}
	if up != nil {
		up.serving(log, p)
		// The old process let them go before it said so; one that
		// crashed may have left them taken for a moment.
		for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
			err := listen()
			if err == nil {
				break
			}
			if time.Since(start) > 5*time.Second {
				// The data path serves on: only the admin API and metrics
				// are missing, and a stop (SIGTERM) still drains.
				log.Error("upgrade: the admin API and metrics listener could not start", "err", err)
				stopMetrics, adm = func() {}, nil
				break
			}
		}
	}
	setReady := func(r bool) {
		if adm != nil {
			adm.SetReady(r)
		}
		ready.Store(r)
	}
	closeAdmin, closeMetrics := sync.OnceFunc(func() {
		if adm != nil {
			adm.Close()
		}
	}), sync.OnceFunc(stopMetrics)
	defer closeMetrics()
	defer closeAdmin()
	waitCluster(ctx, log, p)
	setReady(true)
	p.EmitMetrics()                  // gauges from the first scrape on
	dropProgramPages(log, "started") // what starting touched
	log.Info("tether running", "config", path, "services", len(cfg.Services), "version", version, "pid", os.Getpid())
	notify := func(state string) {
		if err := sdNotify(state); err != nil {
			log.Warn("could not tell the service manager", "state", state, "err", err)
		}
	}
	notify(fmt.Sprintf("READY=1\nSTATUS=serving %d services\nMAINPID=%d", len(cfg.Services), os.Getpid()))

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
		setProcs(next, opts.TCPLoops)
		res := api.ReloadResult{Services: len(next.Services), RestartNeeded: config.RestartNeeded(cfg, next)}
		if len(res.RestartNeeded) > 0 {
			log.Warn("changed settings that take effect only at the next start", "settings", res.RestartNeeded)
		}
		cfg.DrainTimeout = next.DrainTimeout
		log.Info("reloaded", "config", path, "services", len(next.Services))
		return res, nil
	}
	drain := func() error {
		setReady(false)
		log.Info("stopping: draining open connections", "deadline", cfg.DrainTimeout.D())
		dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout.D())
		defer cancel()
		return p.Shutdown(dctx)
	}
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			notify("STOPPING=1")
			return drain()
		case <-upgrade:
			child, err := startUpgrade(log, p)
			if err != nil {
				log.Error("upgrade failed; this process goes on serving", "err", err)
				continue
			}
			// The new process accepts on the same sockets: this one stops,
			// lets the admin socket and metrics address go, and drains.
			p.StopAccepting()
			closeAdmin()
			closeMetrics()
			notify(fmt.Sprintf("MAINPID=%d", child.pid)) // systemd follows the new process: before it says READY
			child.handOver(log, p)
			log.Info("upgraded: the new process serves; this one drains its connections", "pid", child.pid)
			return drain()
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

// waitCluster returns once the cluster has given this instance its peers'
// templates (bounded by cluster.join_timeout), so that /readyz and the
// service manager hear "ready" only then, or when ctx ends.
func waitCluster(ctx context.Context, log *slog.Logger, p *proxy.Proxy) {
	ready := p.ClusterReady()
	select {
	case <-ready:
		return
	default:
	}
	log.Info("cluster: waiting for a peer's templates before saying ready")
	select {
	case <-ctx.Done():
	case <-ready:
	}
}

// dropProgramPages gives the program's pages back to the kernel; those a
// connection needs come back as it runs (package progpages says why).
// Failing costs only memory, so it is logged, not returned.
func dropProgramPages(log *slog.Logger, after string) {
	if n, err := progpages.Drop(); err != nil {
		log.Warn("could not give back the program's start-up pages", "err", err)
	} else {
		log.Debug("gave back the program's pages", "after", after, "bytes", n)
	}
}
