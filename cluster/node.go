package cluster

import (
	"context"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/tetherlb/tether/affinity"
)

// Config configures a Node.
type Config struct {
	// Name is the instance's name in the cluster (default: the host name);
	// unique among the instances.
	Name string
	// Bind is the gossip address (UDP and TCP); port 0 picks one.
	Bind netip.AddrPort
	// Advertise is the address peers reach this instance at; zero: Bind.
	Advertise netip.AddrPort
	// Join lists peers (host:port) to join at start; empty: the first
	// instance, ready at once.
	Join []string
	// SecretKey (16, 24 or 32 bytes: AES-128, -192, -256) encrypts and
	// authenticates every message; nil: none (a trusted network only).
	SecretKey []byte
	// Label keeps clusters on one network apart: a message labelled
	// otherwise is refused.
	Label string
	// Table is the persistence table to share.
	Table *affinity.Table
	// Logger gets the node's and memberlist's log lines.
	Logger *slog.Logger
	// ServerUpdates receives the server changes operators make on peers
	// (ServerChanged there); nil: they are ignored. The node never blocks
	// on it: a full channel drops the change.
	ServerUpdates chan<- ServerUpdate

	// JoinTimeout bounds the wait for a peer's full state before Ready
	// says yes anyway (default 10s): an instance whose peers all are gone
	// must still serve.
	JoinTimeout time.Duration
	// QueueDepth bounds the broadcasts waiting to go out (default 65536):
	// beyond it the oldest are dropped, and the next full-state exchange
	// repairs what they carried.
	QueueDepth int
	// MaxHolds bounds the peers' open templates held here (default
	// 1048576).
	MaxHolds int
	// MaxStateTemplates bounds the templates one full state may carry
	// (default 2097152): a peer announcing more is refused.
	MaxStateTemplates int
	// GossipInterval, ProbeInterval and PushPullInterval are memberlist's
	// (defaults 50ms, 1s and 15s): how often broadcasts go out, how often
	// a peer is checked, and how often two instances exchange their full
	// state, which repairs lost broadcasts.
	GossipInterval, ProbeInterval, PushPullInterval time.Duration
}

// Defaults for Config's zero fields.
const (
	DefaultJoinTimeout      = 10 * time.Second
	DefaultQueueDepth       = 1 << 16
	DefaultMaxHolds         = 1 << 20
	DefaultMaxState         = 1 << 21
	DefaultGossipInterval   = 50 * time.Millisecond
	DefaultProbeInterval    = time.Second
	DefaultPushPullInterval = 15 * time.Second
	// joinTCPTimeout bounds memberlist's TCP exchanges (a join's, a full
	// state's: a million templates take about a second), and so how long
	// Close can wait for a join in progress.
	joinTCPTimeout = 10 * time.Second
	// maxStateBytes keeps a full state under memberlist's 20 MB limit.
	maxStateBytes = 18 << 20
)

func (c *Config) defaults() error {
	if c.Table == nil {
		return fmt.Errorf("cluster: no table")
	}
	if c.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("cluster: no name given and no host name: %w", err)
		}
		c.Name = h
	}
	switch len(c.SecretKey) {
	case 0, 16, 24, 32:
	default:
		return fmt.Errorf("cluster: secret key of %d bytes (want 16, 24 or 32)", len(c.SecretKey))
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&c.JoinTimeout, DefaultJoinTimeout)
	set(&c.GossipInterval, DefaultGossipInterval)
	set(&c.ProbeInterval, DefaultProbeInterval)
	set(&c.PushPullInterval, DefaultPushPullInterval)
	if c.QueueDepth <= 0 {
		c.QueueDepth = DefaultQueueDepth
	}
	if c.MaxHolds <= 0 {
		c.MaxHolds = DefaultMaxHolds
	}
	if c.MaxStateTemplates <= 0 {
		c.MaxStateTemplates = DefaultMaxState
	}
	return nil
}

// Node is one instance's membership in the cluster: it broadcasts the
// table's template changes, applies its peers', and exchanges full state.
type Node struct {
	cfg   Config
	id    uint32
	log   *slog.Logger
	ml    *memberlist.Memberlist
	q     *memberlist.TransmitLimitedQueue
	f     *affinity.Follower
	start time.Time

	ready  atomic.Bool
	readyC chan struct{} // closed once ready
	st     counters

	out      outbox
	mu       sync.Mutex // guards holds, peers, merge, seen, lastEmit
	seen     seenSet    // broadcasts relayed
	lastEmit Stats
	holds    map[holdKey]hold
	peers    map[uint32]*peer
	merge    uint64 // the number of full states merged, to mark holds seen

	cancel    context.CancelFunc
	wg        sync.WaitGroup // run and join
	closeOnce sync.Once
	closeErr  error
}

// holdKey is a peer's template held here: the peer's id and the template
// as the peer names it.
type holdKey struct {
	peer   uint32
	svc    affinity.Service
	client netip.Addr
}

type hold struct {
	lease affinity.Lease
	seen  uint64 // the merge that last saw it busy
}

// peer is what the node knows of another instance.
type peer struct {
	name      string
	addr      string
	heard     time.Time // its last message or state
	templates int       // in its last full state
}

// id is an instance's id on the wire.
func id(name string) uint32 { return crc32.Checksum([]byte(name), crc32.MakeTable(crc32.Castagnoli)) }

// Start joins the cluster (in the background: Ready says when the first
// full state is in) and starts sharing cfg.Table. Close leaves.
func Start(cfg Config) (*Node, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, id: id(cfg.Name), log: cfg.Logger.With("cluster", cfg.Name), start: time.Now(),
		holds: map[holdKey]hold{}, peers: map[uint32]*peer{}, readyC: make(chan struct{})}
	f, err := cfg.Table.Follow(1<<15, true)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	n.f = f
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = cfg.Bind.Addr().String()
	mc.BindPort = int(cfg.Bind.Port())
	if cfg.Advertise.IsValid() {
		mc.AdvertiseAddr = cfg.Advertise.Addr().String()
		mc.AdvertisePort = int(cfg.Advertise.Port())
	}
	mc.Label = cfg.Label
	mc.SecretKey = cfg.SecretKey
	mc.GossipInterval = cfg.GossipInterval
	mc.ProbeInterval = cfg.ProbeInterval
	mc.PushPullInterval = cfg.PushPullInterval
	mc.TCPTimeout = joinTCPTimeout
	// Records are compact already; LZW cost more CPU than the bytes it
	// saved on a LAN (12 % of a bind with the cluster on).
	mc.EnableCompression = false
	mc.Delegate = (*delegate)(n)
	mc.Events = (*events)(n)
	mc.Logger = newLogLogger(n.log)
	n.q = &memberlist.TransmitLimitedQueue{NumNodes: n.numNodes, RetransmitMult: mc.RetransmitMult}
	ml, err := memberlist.Create(mc)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("cluster: gossip on %s: %w", cfg.Bind, err)
	}
	n.ml = ml
	n.cfg.Join = others(cfg.Join, n.Addr(), cfg.Bind)
	if len(n.cfg.Join) == 0 {
		n.setReady("first instance")
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.wg.Add(1)
	go n.run(ctx)
	if len(n.cfg.Join) > 0 {
		n.wg.Add(1)
		go n.join(ctx)
	}
	return n, nil
}

func (n *Node) numNodes() int {
	if n.ml == nil {
		return 1
	}
	return n.ml.NumMembers()
}

// Addr is the address peers reach this instance at.
func (n *Node) Addr() netip.AddrPort {
	ln := n.ml.LocalNode()
	a, _ := netip.AddrFromSlice(ln.Addr)
	return netip.AddrPortFrom(a.Unmap(), ln.Port)
}

// Ready says the node has a peer's full state, or has none to wait for:
// it was started with nothing to join, or no peer answered within
// JoinTimeout.
func (n *Node) Ready() bool { return n.ready.Load() }

// ReadyC is closed once the node is Ready.
func (n *Node) ReadyC() <-chan struct{} { return n.readyC }

func (n *Node) setReady(why string) {
	if !n.ready.Swap(true) {
		close(n.readyC)
		n.log.Info("cluster: ready", "why", why, "after", time.Since(n.start).Round(time.Millisecond), "templates", n.cfg.Table.Len())
	}
}

// run owns the node's background work: joining, and turning the table's
// changes into broadcasts.
func (n *Node) run(ctx context.Context) {
	defer n.wg.Done()
	flush := time.NewTicker(n.cfg.GossipInterval)
	defer flush.Stop()
	var buf []affinity.Change
	for {
		select {
		case <-ctx.Done():
			return
		case <-flush.C:
			n.flush()
		case <-n.f.Wake():
			var lost bool
			buf, lost = n.f.Changes(buf[:0])
			n.broadcastChanges(buf)
			if lost {
				n.st.lost.Add(1)
				n.log.Warn("cluster: template changes came faster than they were queued; peers get them at the next full-state exchange")
			}
		}
	}
}

// Invalidate drops the templates f selects here and on every peer (tether
// affinity rm). A peer spares the templates it used after now: across a
// partition, the message arrives when the other side has bound its
// clients again.
func (n *Node) Invalidate(f affinity.Filter) int {
	inv := invalidation{nonce: rand.Uint64(), at: time.Now(), svc: f.Service, client: f.Client, server: f.Server}
	n.broadcast(appendInvalidation(appendHeader(nil, kindInvalidate, n.id), inv))
	return n.cfg.Table.Invalidate(f)
}

// Close leaves the cluster, stops the node's goroutines and gives back
// the peers' holds, so their templates expire here as idle ones. Later
// calls return the first one's error.
func (n *Node) Close() error {
	n.closeOnce.Do(func() { n.closeErr = n.close() })
	return n.closeErr
}

func (n *Node) close() error {
	n.cancel()
	n.wg.Wait()
	err := n.ml.Leave(time.Second)
	if e := n.ml.Shutdown(); err == nil {
		err = e
	}
	n.f.Close()
	n.releaseHolds(func(holdKey, hold) bool { return true })
	return err
}
