package proxy

import (
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	metrics "github.com/hashicorp/go-metrics"
	"github.com/tetherlb/tether/affinity"
	"github.com/tetherlb/tether/budget"
	"github.com/tetherlb/tether/cluster"
	"github.com/tetherlb/tether/config"
	"github.com/tetherlb/tether/health"
	"github.com/tetherlb/tether/internal/ratelog"
	"github.com/tetherlb/tether/lruset"
	"github.com/tetherlb/tether/marks"
	"github.com/tetherlb/tether/tcploop"
	"github.com/tetherlb/tether/tcprelay"
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
	// Descriptors is the file-descriptor limit the caps a config leaves
	// out are derived from (package budget); 0 reads RLIMIT_NOFILE at
	// Start, raising the soft limit to the hard one. Tests set it.
	Descriptors int
	// TCPLoops is how many event loops serve TCP connections (package
	// tcploop): 0, one per CPU; -1, none: a goroutine per connection
	// (tether run reads TETHER_TCP_LOOPS, to compare the two).
	TCPLoops int
	// DirectorScanEvery is the least interval between the director's
	// conntrack scans (0: director.DefaultScanEvery); tests shorten it.
	DirectorScanEvery time.Duration
	// Inherit are listening sockets to take over instead of opening them
	// (a hot upgrade's new process), and Restore a snapshot to restore at
	// start instead of the configured one.
	Inherit *Inheritance
	Restore string
}

// Proxy runs the virtual services of one configuration and follows its
// reloads.
type Proxy struct {
	log       *slog.Logger
	rlog      *ratelog.Logger // for lines that can repeat fast: at most one a second
	capLine   *ratelog.Kind   // a service at its connection cap (atCap)
	met       *metrics.Metrics
	metricsOn bool    // Options.Metrics was given: counters are reported
	ev        events  // the proxy's own event counters (events.go)
	emit      emitter // what EmitMetrics reported, and of what
	do        func(func() error) error
	scanEvery time.Duration // Options.DirectorScanEvery
	table     *affinity.Table
	owned     bool                         // table made here, closed here
	cluster   atomic.Pointer[cluster.Node] // nil: no cluster
	// peerStop and peerDone stop followPeerServers (cluster.go).
	peerStop, peerDone chan struct{}

	ctx    context.Context // cancelled when a stop gives up draining
	cancel context.CancelFunc

	ctl control                     // runs every change: Start, Reload, Shutdown, health, server set
	cfg atomic.Pointer[config.File] // in force; the data path reads it too

	svcMu    sync.RWMutex // guards services; connections read it
	services map[config.ServiceKey]*service
	conns    conns

	tp *transparent // the TPROXY listeners and nft table, with marks
	// marked are the listeners of mark classes tether listens for instead
	// of TPROXYing (marklisten.go): the control loop swaps them, Status
	// reads them; markSet the classes in force, by which both paths'
	// connections find their service.
	marked  atomic.Pointer[markListeners]
	markSet atomic.Pointer[marks.Set]
	// addrs follows the namespace's addresses for marked (addrwatch.go),
	// from Start to Shutdown.
	addrs *addrWatch
	dir   atomic.Pointer[dirPath] // the NFQUEUE director, with director services
	// noTableOwner is set once the kernel has refused the table owner
	// flag (and by tests, to take that path on kernels that have it).
	noTableOwner bool
	// noPersist is set once the kernel has refused the table persist
	// flag (director tables with fail_open).
	noPersist bool

	budget     budget.Budget               // descriptors: read at Start
	caps       atomic.Pointer[budget.Caps] // in force: what the config sets, or derived
	flowsTotal atomic.Int64                // UDP flows of all services, against caps.UDPFlows
	onePackets atomic.Int64                // one-packet datagrams in flight, against caps.OnePacket

	health *health.Monitor[checkKey] // the servers' health checks
	hooks  *health.Hooks             // quorum_up and quorum_down commands

	// snapStop, snapNow and snapDone run the periodic snapshot writer
	// (snapshots), from Start to Shutdown.
	snapStop, snapNow, snapDone chan struct{}

	replies *udpbatch.Pool  // UDP flows borrow a batch while replies are queued
	tcp     *tcprelay.Relay // copies TCP connections: buffers and splice pipes
	// loops serve TCP connections (package tcploop), started with the
	// first listener; loopCount is Options.TCPLoops.
	loops     *tcploop.Loops
	loopCount int

	inherit    *Inheritance // Options.Inherit, until Start has taken them
	restore    string       // Options.Restore
	handedOver bool         // StopAccepting ran: Shutdown writes no snapshot

	// verdictHook, set by tests before Start, runs before each director
	// verdict: it can hold a packet in the queue.
	verdictHook func()
	// dialHook, set by tests before Start, dials real servers instead of
	// the service's dialer: it can fail as a host short of descriptors.
	dialHook func(ctx context.Context, network, addr string) (net.Conn, error)
	// addrBuffer, set by tests before Start, shrinks the address watch's
	// socket buffer, so that a burst of events overflows it; addrHook
	// runs when the watch is about to wait for the control loop.
	addrBuffer int
	addrHook   func()
	// loopDialHook is dialHook for the event loops' connects.
	loopDialHook func(addr netip.AddrPort) (int, error)
	// leftHook runs when a reload has stopped a listener that changes
	// hands (a mark class's and a `listen:` service's address) from
	// accepting, before its new owner accepts: connections made then wait
	// in its backlog.
	leftHook func(addr netip.AddrPort)
}

// New prepares a proxy for cfg; Start opens its listeners.
func New(cfg *config.File, o Options) *Proxy {
	p := &Proxy{budget: budget.Of(o.Descriptors), log: o.Logger, met: o.Metrics, metricsOn: o.Metrics != nil, table: o.Table, do: o.Do, loopCount: o.TCPLoops, scanEvery: o.DirectorScanEvery, inherit: o.Inherit, restore: o.Restore, services: map[config.ServiceKey]*service{}}
	p.marked.Store(&markListeners{})
	if p.log == nil {
		p.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p.rlog = ratelog.New(p.log, time.Second)
	p.capLine = p.rlog.Kind(slog.LevelWarn, "a service at its connection cap refuses new connections")
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
	p.hooks = health.NewHooks(p.log, o.Do)
	p.replies = udpbatch.NewPool(udpBatch)
	p.tcp = tcprelay.New(func() int { return p.caps.Load().Pipes })
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
		return err
	}
	p.startAddrWatch()
	return nil
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
	path := cmp.Or(p.restore, p.currentCfg().Snapshot)
	if path != "" || p.currentCfg().Cluster != nil {
		// Register services and servers first: a restore and the
		// cluster keep only the templates whose service and server exist.
		for _, s := range plan.start {
			if _, err := buildState(s.cfg, nil, p.table, plan.caps); err != nil {
				plan.abort()
				return err
			}
		}
	}
	if path != "" {
		st, err := p.table.LoadSnapshot(path)
		if err != nil {
			p.log.Error("persistence snapshot not restored; starting with an empty table", "err", err)
		} else {
			p.log.Info("persistence snapshot restored", "path", path, "restored", st.Restored,
				"expired", st.Expired, "unknown", st.Unknown)
		}
	}
	if err := p.startCluster(p.currentCfg()); err != nil {
		plan.abort()
		return err
	}
	if err := p.commit(plan); err != nil {
		p.stopCluster()
		return err
	}
	p.inherit.closeRest()
	p.snapStop, p.snapNow, p.snapDone = make(chan struct{}), make(chan struct{}, 1), make(chan struct{})
	go p.table.SnapshotEvery(p.snapStop, p.snapNow, p.snapDone, func() (string, time.Duration) {
		c := p.currentCfg()
		return c.Snapshot, c.SnapshotInterval.D()
	}, p.log)
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
	p.health.Close()  // first: a reported change waits for the control loop
	p.stopAddrWatch() // so does an address change
	err := p.control(func() error { return p.shutdown(ctx) })
	p.stopControl()
	p.hooks.Close() // after the loop: no quorum change comes any more
	return err
}

func (p *Proxy) shutdown(ctx context.Context) error {
	for _, s := range p.services {
		s.closeListener()
		p.closeUDP(s) // and with it its flows
	}
	for _, s := range p.services {
		<-s.done
	}
	if p.tp != nil {
		p.stopTransparent(p.tp)
	}
	p.closeMarkListeners()
	drained := make(chan struct{})
	go func() { p.conns.wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-ctx.Done():
		p.log.Warn("drain deadline passed; closing open connections")
		p.cancel()
		p.conns.closeAll()
		if p.loops != nil {
			p.loops.CloseAll()
		}
		<-drained
	}
	if p.loops != nil {
		p.loops.Close()
		p.loops = nil
	}
	p.tcp.Close()
	p.cancel()
	p.stopSnapshots() // the writer stops before the last snapshot
	// Leave once this instance's connections are gone: its peers then
	// let go of the templates it held open.
	err := errors.Join(p.stopCluster(), p.stopDirector(), p.removeMarks())
	if path := p.currentCfg().Snapshot; path != "" && !p.handedOver {
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

// roomForFlow makes room for one more UDP flow under the UDP flow cap by
// closing the oldest flow of set, and reports whether there is room.
func roomForFlow[K comparable, V comparable](p *Proxy, set *lruset.Set[K, V], closeV func(V, string)) bool {
	if p.flowsTotal.Load() < int64(p.caps.Load().UDPFlows) {
		return true
	}
	if v, ok := set.RemoveOldest(); ok {
		p.ev.add(evUDPFlowsEvicted)
		closeV(v, "evicted: udp_max_flows")
		return true
	}
	return false
}

// stopSnapshots stops the periodic snapshot writer, if it runs.
func (p *Proxy) stopSnapshots() {
	if p.snapStop != nil {
		close(p.snapStop)
		<-p.snapDone
		p.snapStop = nil
	}
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
