package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/budget"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/health"
	"github.com/tetherlb/tether/internal/ratelog"
	"github.com/tetherlb/tether/marks"
	"github.com/tetherlb/tether/udpbatch"
)

// Options are what a Proxy needs besides its configuration. The zero value
// works: no logs, no metrics.
type Options struct {
	// Logger receives the proxy's logs; nil discards them.
	Logger *slog.Logger
	// Metrics receives counters; nil discards them, and the data path
	// then skips them altogether (go-metrics allocates per call even into
	// its blackhole sink).
	Metrics *metrics.Metrics
	// Table is the persistence table to use; nil makes one sized by the
	// config. Tests pass one with an injected clock.
	Table *affinity.Table
	// Do runs f in the proxy's network namespace: every socket the proxy
	// makes after Start (dials to real servers, transparent UDP flows) is
	// made through it. nil runs f as is, in the namespace the process is
	// in; tests that put the proxy in a testenv host pass the host's Do.
	Do func(f func() error) error
	// SetSysctls lets the proxy set the sysctls its data paths want in
	// its network namespace (tether run --set-sysctls); otherwise it only
	// says which to set.
	SetSysctls bool
	// Descriptors is the file-descriptor limit the caps a config leaves
	// out are derived from (package budget); 0 reads RLIMIT_NOFILE at
	// Start, raising the soft limit to the hard one. Tests set it.
	Descriptors int
}

// Proxy runs the virtual services of one configuration and follows its
// reloads.
type Proxy struct {
	log        *slog.Logger
	rlog       *ratelog.Logger // for lines that can repeat fast: at most one a second
	met        *metrics.Metrics
	metricsOn  bool // Options.Metrics was given: the data path counts
	do         func(func() error) error
	setSysctls bool
	table      *affinity.Table
	owned      bool // table made here, closed here

	ctx    context.Context // cancelled when a stop gives up draining
	cancel context.CancelFunc

	ctl control                     // runs every change: Start, Reload, Shutdown, health, server set
	cfg atomic.Pointer[config.File] // in force; the data path reads it too

	svcMu    sync.RWMutex // guards services; connections read it
	services map[config.ServiceKey]*service
	conns    conns

	tp  *transparent            // the TPROXY listeners and nft table, with marks
	dir atomic.Pointer[dirPath] // the NFQUEUE director, with director services
	// noTableOwner is set once the kernel has refused the table owner
	// flag (and by tests, to take that path on kernels that have it).
	noTableOwner bool

	budget     budget.Budget               // descriptors: read at Start
	caps       atomic.Pointer[budget.Caps] // in force: what the config sets, or derived
	flowsTotal atomic.Int64                // UDP flows of all services, against caps.UDPFlows
	onePackets atomic.Int64                // one-packet datagrams in flight, against caps.OnePacket

	health *health.Monitor[checkKey] // the servers' health checks

	// snapStop, snapNow and snapDone run the periodic snapshot writer
	// (snapshots), from Start to Shutdown.
	snapStop, snapNow, snapDone chan struct{}

	replies *udpbatch.Pool // UDP flows borrow a batch while replies are queued
	bufs    sync.Pool      // *[copyBuf]byte: a TCP direction borrows one per read
	pipes   *pipePool      // splice pipes for TCP directions that carry bulk

	// verdictHook, set by tests before Start, runs before each director
	// verdict: it can hold a packet in the queue.
	verdictHook func()
	// dialHook, set by tests before Start, dials real servers instead of
	// the service's dialer: it can fail as a host short of descriptors.
	dialHook func(ctx context.Context, network, addr string) (net.Conn, error)
}

// New prepares a proxy for cfg; Start opens its listeners.
func New(cfg *config.File, o Options) *Proxy {
	p := &Proxy{budget: budget.Of(o.Descriptors), log: o.Logger, met: o.Metrics, metricsOn: o.Metrics != nil, table: o.Table, setSysctls: o.SetSysctls, do: o.Do, services: map[config.ServiceKey]*service{}}
	if p.log == nil {
		p.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p.rlog = ratelog.New(p.log, time.Second)
	if p.met == nil {
		p.met, _ = metrics.New(quietMetricsConfig(), &metrics.BlackholeSink{})
	}
	if p.table == nil {
		p.table = affinity.New(affinity.Options{Capacity: cfg.Affinity.Capacity})
		p.owned = true
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.cfg.Store(cfg)
	p.health = health.NewMonitor(p.healthChanged)
	p.replies = udpbatch.NewPool(udpBatch)
	p.bufs.New = func() any { return new([copyBuf]byte) }
	p.pipes = newPipePool()
	return p
}

// quietMetricsConfig is go-metrics' default without the host name, the
// service label and the runtime-stats goroutine.
func quietMetricsConfig() *metrics.Config {
	c := metrics.DefaultConfig("tether")
	c.EnableHostname, c.EnableHostnameLabel, c.EnableServiceLabel = false, false, false
	c.EnableRuntimeMetrics = false
	return c
}

// Table is the persistence table the proxy uses.
func (p *Proxy) Table() *affinity.Table { return p.table }

// Start restores the snapshot, if the config names one, and opens every
// service's listener, in the namespace Options.Do enters. If a listener
// cannot be opened, none stays open.
func (p *Proxy) Start() error {
	err := p.control(p.start)
	if err != nil {
		p.stopControl()
	}
	return err
}

func (p *Proxy) start() error {
	if p.budget.Limit == 0 {
		b, err := budget.Read()
		if err != nil {
			return err
		}
		p.budget = b
	}
	plan, err := p.plan(p.currentCfg())
	if err != nil {
		return err
	}
	if path := p.currentCfg().Snapshot; path != "" {
		// Register services and servers first: restore keeps only the
		// templates whose service and server still exist.
		for _, s := range plan.start {
			if _, err := buildState(s.cfg, nil, p.table, plan.caps); err != nil {
				plan.abort()
				return err
			}
		}
		st, err := p.table.LoadSnapshot(path)
		if err != nil {
			p.log.Error("persistence snapshot not restored; starting with an empty table", "err", err)
		} else {
			p.log.Info("persistence snapshot restored", "path", path, "restored", st.Restored,
				"expired", st.Expired, "unknown", st.Unknown)
		}
	}
	if err := p.commit(plan); err != nil {
		return err
	}
	p.snapStop, p.snapNow, p.snapDone = make(chan struct{}), make(chan struct{}, 1), make(chan struct{})
	go p.snapshots(p.snapStop, p.snapNow)
	return nil
}

// Reload moves to a new configuration. Services whose protocol and listen
// address are unchanged keep their listening socket and open connections;
// their templates stay, and a changed timeout applies to them. If anything
// in cfg cannot be put in place (a listener cannot be opened), nothing
// changes and the old configuration keeps running.
func (p *Proxy) Reload(cfg *config.File) error {
	return p.control(func() error { return p.reload(cfg) })
}

func (p *Proxy) reload(cfg *config.File) error {
	plan, err := p.plan(cfg)
	if err != nil {
		return err
	}
	if err := p.commit(plan); err != nil {
		return err
	}
	p.cfg.Store(cfg)
	select { // a snapshot of the new configuration's templates, soon
	case p.snapNow <- struct{}{}:
	default:
	}
	return nil
}

// plan is a reload worked out but not yet applied: the listeners it needs
// are already open, so applying it cannot fail for lack of one.
type plan struct {
	cfg   *config.File
	start []*planned   // new services, with their listeners
	keep  []*planned   // services that stay, with their new config
	stop  []*service   // services that go
	tp    *transparent // newly opened transparent listeners
	dir   *dirPath     // newly opened director
	caps  *budget.Caps // the bounds cfg runs with
}

type planned struct {
	cfg config.Service
	svc *service // existing one for keep
	ln  *net.TCPListener
	pc  *net.UDPConn
	// rc and family are pc's raw socket and address family.
	rc     syscall.RawConn
	family int
}

func (pl *plan) abort() {
	for _, s := range pl.start {
		if s.ln != nil {
			s.ln.Close()
		}
		if s.pc != nil {
			s.pc.Close()
		}
	}
	if pl.tp != nil {
		pl.tp.close()
	}
	if pl.dir != nil {
		pl.dir.close()
	}
}

// plan matches services by listen address or mark, their identity (and
// their templates' identity): a service whose address is unchanged keeps
// its socket even if renamed.
func (p *Proxy) plan(cfg *config.File) (*plan, error) {
	caps, err := budget.Derive(cfg, p.budget)
	if err != nil {
		return nil, err
	}
	pl := &plan{cfg: cfg, caps: &caps}
	kept := map[config.ServiceKey]bool{}
	for _, sc := range cfg.Services {
		k := sc.Key()
		if old := p.services[k]; old != nil {
			pl.keep = append(pl.keep, &planned{cfg: sc, svc: old})
			kept[k] = true
			continue
		}
		if sc.Fwmark != 0 || sc.Mode == config.ModeDirector {
			pl.start = append(pl.start, &planned{cfg: sc})
			continue
		}
		if k.UDP {
			var lc net.ListenConfig
			c, err := lc.ListenPacket(p.ctx, "udp", k.VIP.String())
			if err != nil {
				pl.abort()
				return nil, fmt.Errorf("service %s: %w", sc.Name, err)
			}
			s := &planned{cfg: sc, pc: c.(*net.UDPConn)}
			pl.start = append(pl.start, s) // before the error: abort closes it
			if s.rc, err = s.pc.SyscallConn(); err == nil {
				s.family, err = udpbatch.Family(s.rc)
			}
			if err != nil {
				pl.abort()
				return nil, fmt.Errorf("service %s: %w", sc.Name, err)
			}
			continue
		}
		if k.VIP.Port() == 0 {
			pl.abort()
			return nil, fmt.Errorf("service %s: listen %s: port 0 (every port of the VIP) needs a firewall-mark service; the socket proxy listens on one port", sc.Name, sc.Listen)
		}
		lc := net.ListenConfig{KeepAlive: -1} // see serviceState.dialer
		l, err := lc.Listen(p.ctx, "tcp", k.VIP.String())
		if err != nil {
			pl.abort()
			return nil, fmt.Errorf("service %s: %w", sc.Name, err)
		}
		pl.start = append(pl.start, &planned{cfg: sc, ln: l.(*net.TCPListener)})
	}
	for k, s := range p.services {
		if !kept[k] {
			pl.stop = append(pl.stop, s)
		}
	}
	if p.dir.Load() == nil && cfg.HasDirector() {
		d, err := p.openDirector(cfg)
		if err != nil {
			pl.abort()
			return nil, err
		}
		pl.dir = d
	}
	if len(cfg.Marks) > 0 && (p.tp == nil || p.tp.port != cfg.TProxyPort || (len(p.tp.ulns) > 0) != coversUDP(cfg)) {
		tp, err := p.openTransparent(cfg, caps.UDPFlows)
		if err != nil {
			pl.abort()
			return nil, err
		}
		pl.tp = tp
	}
	return pl, nil
}

// commit applies a plan. Building a state cannot fail for a validated
// config, but if it does, the plan's new listeners are closed.
func (p *Proxy) commit(pl *plan) error {
	type built struct {
		pl *planned
		st *serviceState
	}
	var states []built
	for _, s := range slices.Concat(pl.start, pl.keep) {
		var prev *serviceState
		if s.svc != nil {
			prev = s.svc.state.Load()
		}
		st, err := buildState(s.cfg, prev, p.table, pl.caps)
		if err != nil {
			pl.abort()
			return err
		}
		states = append(states, built{s, st})
	}
	if err := p.applyMarks(pl); err != nil {
		pl.abort()
		return err
	}
	p.caps.Store(pl.caps)
	for _, old := range pl.stop {
		p.stopService(old)
	}
	for _, b := range states {
		if svc := b.pl.svc; svc != nil {
			svc.state.Store(b.st)
			if svc.flows != nil { // a changed limits.max_flows applies now
				for _, f := range svc.flows.resize(b.st.maxFlows) {
					p.closeFlow(f, "evicted: a reload lowered max_flows")
				}
			}
			continue
		}
		k := b.pl.cfg.Key()
		svc := &service{key: k, director: b.pl.cfg.Mode == config.ModeDirector, ln: b.pl.ln, pc: b.pl.pc, rc: b.pl.rc, family: b.pl.family, done: make(chan struct{})}
		svc.state.Store(b.st)
		p.svcMu.Lock()
		p.services[k] = svc
		p.svcMu.Unlock()
		if svc.pc != nil {
			svc.flows = newFlowTable(b.st.maxFlows)
			go p.serveUDP(svc)
			p.log.Info("udp service listening", "service", b.pl.cfg.Name, "listen", svc.pc.LocalAddr(), "scheduler", b.st.cfg.Scheduler, "servers", len(b.st.servers), "one_packet", b.st.cfg.OnePacket)
			continue
		}
		if svc.director {
			close(svc.done) // the director's queues take its flows
			p.log.Info("director service", "service", b.pl.cfg.Name, "listen", b.pl.cfg.Listen, "fwmark", k.Mark, "scheduler", b.st.cfg.Scheduler, "servers", len(b.st.servers))
			continue
		}
		if svc.ln == nil {
			close(svc.done) // a mark service: the transparent listeners accept for it
			p.log.Info("service on firewall mark", "service", b.pl.cfg.Name, "fwmark", k.Mark, "scheduler", b.st.cfg.Scheduler, "servers", len(b.st.servers))
			continue
		}
		go p.acceptLoop(svc)
		p.log.Info("service listening", "service", b.pl.cfg.Name, "listen", svc.ln.Addr(), "scheduler", b.st.cfg.Scheduler, "servers", len(b.st.servers))
	}
	p.setChecks()
	return p.commitDirector(pl)
}

// commitDirector puts the director in place after the services it serves,
// or stops it when no service needs it.
func (p *Proxy) commitDirector(pl *plan) error {
	if pl.dir != nil {
		p.dir.Store(pl.dir)
		pl.dir = nil
	}
	if !pl.cfg.HasDirector() {
		return p.stopDirector()
	}
	// Changed queue settings wait for the next start (config.RestartNeeded
	// says so to whoever reloads); the tables keep the running queues.
	return p.applyDirector(pl.cfg)
}

// stopService closes a service's listener and drops its templates; its
// open connections run on until they close.
func (p *Proxy) stopService(s *service) {
	if s.ln != nil {
		s.ln.Close()
	}
	if s.pc != nil {
		s.pc.Close()
	}
	<-s.done
	p.svcMu.Lock()
	delete(p.services, s.key)
	p.svcMu.Unlock()
	if st := s.state.Load(); st.persistent {
		p.table.RemoveService(st.ref)
	}
	p.log.Info("service stopped", "service", s.state.Load().cfg.Name)
}

// current returns the newest state of the service st belongs to.
func (p *Proxy) current(st *serviceState) *serviceState {
	p.svcMu.RLock()
	defer p.svcMu.RUnlock()
	if s := p.services[st.cfg.Key()]; s != nil {
		return s.state.Load()
	}
	return st
}

// Shutdown stops accepting, waits for open connections until ctx ends,
// closes the ones left, and writes the persistence snapshot.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.health.Close() // first: a reported change waits for the control loop
	err := p.control(func() error { return p.shutdown(ctx) })
	p.stopControl()
	return err
}

func (p *Proxy) shutdown(ctx context.Context) error {
	for _, s := range p.services {
		if s.ln != nil {
			s.ln.Close()
		}
		if s.pc != nil {
			s.pc.Close() // its read loop closes its flows
		}
	}
	for _, s := range p.services {
		<-s.done
	}
	if p.tp != nil {
		p.stopTransparent(p.tp)
	}
	drained := make(chan struct{})
	go func() { p.conns.wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-ctx.Done():
		p.log.Warn("drain deadline passed; closing open connections")
		p.cancel()
		p.conns.closeAll()
		<-drained
	}
	p.pipes.close()
	p.cancel()
	if p.snapStop != nil { // the writer stops before the last snapshot
		close(p.snapStop)
		<-p.snapDone
	}
	err := errors.Join(p.stopDirector(), p.removeMarks())
	if path := p.currentCfg().Snapshot; path != "" {
		if serr := p.table.SaveSnapshot(path); serr != nil {
			err = errors.Join(err, serr)
		} else {
			p.log.Info("persistence snapshot written", "path", path, "templates", p.table.Len())
		}
	}
	if p.owned {
		err = errors.Join(err, p.table.Close())
	}
	return err
}

// coversUDP reports whether a mark class of cfg covers UDP, so that the
// transparent UDP listeners are needed.
func coversUDP(cfg *config.File) bool {
	for _, c := range cfg.MarkSet.Classes {
		if c.Protocols&marks.UDP != 0 {
			return true
		}
	}
	return false
}

// roomForFlow makes room for one more UDP flow under the UDP flow cap by
// closing the oldest flow of set, and reports whether there is room.
func roomForFlow[K comparable, V comparable](p *Proxy, set *lruSet[K, V], closeV func(V, string)) bool {
	if p.flowsTotal.Load() < int64(p.caps.Load().UDPFlows) {
		return true
	}
	if v, ok := set.removeOldest(); ok {
		p.count("udp", "flows_evicted", 1, nil)
		closeV(v, "evicted: udp_max_flows")
		return true
	}
	return false
}

// currentCfg is the configuration in force.
func (p *Proxy) currentCfg() *config.File { return p.cfg.Load() }

// inNamespace runs f in the proxy's network namespace (Options.Do).
func (p *Proxy) inNamespace(f func() error) error {
	if p.do != nil {
		return p.do(f)
	}
	return f()
}

// dialNet connects to a real server within the service's connect timeout,
// from the proxy's namespace.
func (p *Proxy) dialNet(st *serviceState, network string, addr netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(p.ctx, st.dialer.Timeout)
	defer cancel()
	dial := st.dialer.DialContext
	if p.dialHook != nil {
		dial = p.dialHook
	}
	var c net.Conn
	err := p.inNamespace(func() (err error) {
		c, err = dial(ctx, network, addr.String())
		return err
	})
	return c, err
}
