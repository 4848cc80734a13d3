package cluster

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"hash/fnv"
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

	ready atomic.Bool
	st    counters

	out      outbox
	mu       sync.Mutex // guards holds, peers, merge, seen, lastEmit
	seen     seenSet    // invalidations relayed
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
		holds: map[holdKey]hold{}, peers: map[uint32]*peer{}}
	f, err := cfg.Table.Follow(4096, true)
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

func (n *Node) setReady(why string) {
	if !n.ready.Swap(true) {
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

// join joins through any of cfg.Join, retrying every second, and says
// ready once it has (memberlist merges the peer's full state before Join
// returns) or after JoinTimeout. Then it keeps rejoining the listed
// instances that are not alive members: memberlist forgets a peer it
// declared dead, so after a partition longer than its suspicion timeout
// (seconds) the two sides would stay apart. A join blocks for up to
// memberlist's TCPTimeout: on its own goroutine, so that changes flow
// meanwhile.
func (n *Node) join(ctx context.Context) {
	defer n.wg.Done()
	deadline := time.NewTimer(n.cfg.JoinTimeout)
	defer deadline.Stop()
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			if !n.ready.Load() {
				n.log.Warn("cluster: no peer answered; serving without their templates", "join", n.cfg.Join, "waited", n.cfg.JoinTimeout)
				n.setReady("join timeout")
			}
			continue
		case <-retry.C:
		}
		wait := time.Second
		if !n.ready.Load() {
			c, err := n.ml.Join(n.cfg.Join)
			if c > 0 {
				n.setReady("joined")
				wait = rejoinInterval
			} else {
				n.log.Debug("cluster: join failed; retrying", "join", n.cfg.Join, "err", err)
			}
		} else {
			if missing := n.missing(); len(missing) > 0 {
				if c, _ := n.ml.Join(missing); c > 0 {
					n.log.Info("cluster: rejoined", "listed", missing, "answered", c)
				}
			}
			wait = rejoinInterval
		}
		retry.Reset(wait)
	}
}

// rejoinInterval is how often listed instances that are not alive members
// are joined again.
const rejoinInterval = 5 * time.Second

// missing are the listed instances that are not alive members (a listed
// name that is not an address is always tried: a join of a member costs
// a push/pull).
func (n *Node) missing() []string {
	alive := map[netip.AddrPort]bool{}
	for _, m := range n.ml.Members() {
		if a, ok := netip.AddrFromSlice(m.Addr); ok && m.State == memberlist.StateAlive {
			alive[netip.AddrPortFrom(a.Unmap(), m.Port)] = true
		}
	}
	var out []string
	for _, j := range n.cfg.Join {
		if ap, err := netip.ParseAddrPort(j); err != nil || !alive[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] {
			out = append(out, j)
		}
	}
	return out
}

// broadcastChanges queues this instance's template changes for its peers.
func (n *Node) broadcastChanges(changes []affinity.Change) {
	for _, c := range changes {
		rec := record{svc: c.Service, client: c.Client, server: c.Server, busy: c.Kind == affinity.Busy}
		switch c.Kind {
		case affinity.Busy:
		case affinity.Idle:
			rec.left = c.Timeout - n.cfg.Table.Since(c.At)
		default:
			continue // expiry and eviction are each instance's own
		}
		n.queue(rec)
	}
}

// queue puts a template of this instance's in the outbox; a newer state
// of a template replaces one not yet sent.
func (n *Node) queue(rec record) {
	k := outKey{svc: rec.svc, client: rec.client}
	n.out.mu.Lock()
	defer n.out.mu.Unlock()
	if i, ok := n.out.index[k]; ok {
		n.out.recs[i] = rec
		return
	}
	if len(n.out.recs) >= n.cfg.QueueDepth {
		n.st.pruned.Add(1) // the next full-state exchange carries it
		return
	}
	if n.out.index == nil {
		n.out.index = map[outKey]int{}
	}
	n.out.index[k] = len(n.out.recs)
	n.out.recs = append(n.out.recs, rec)
	n.st.queued.Add(1)
}

// outbox holds this instance's template changes until the next flush.
type outbox struct {
	mu    sync.Mutex
	recs  []record
	index map[outKey]int
}

type outKey struct {
	svc    affinity.Service
	client netip.Addr
}

// maxPacket bounds a templates message: memberlist sends it in one UDP
// packet (1400 bytes), with its label and encryption around it.
const maxPacket = 1200

// flush sends the outbox to every other member, in messages of up to
// maxPacket bytes. Each instance sends its own changes to all: memberlist's
// broadcast queue sends each message to a few random members only, and
// lost 2 templates of 200 that way in the ECMP test before relays were
// added; direct sends reach every member that is up, and the full-state
// exchange repairs a lost packet.
func (n *Node) flush() {
	n.out.mu.Lock()
	recs := n.out.recs
	n.out.recs, n.out.index = nil, nil
	n.out.mu.Unlock()
	if len(recs) == 0 {
		return
	}
	var msgs [][]byte
	for len(recs) > 0 {
		b := appendHeader(make([]byte, 0, maxPacket), kindTemplates, n.id)
		b = append(b, 0, 0)
		count := 0
		for len(recs) > 0 && len(b)+maxRecord <= maxPacket {
			b = appendRecord(b, recs[0])
			recs = recs[1:]
			count++
		}
		binary.BigEndian.PutUint16(b[headerLen:], uint16(count))
		msgs = append(msgs, b)
	}
	for _, m := range n.ml.Members() {
		if m.Name == n.cfg.Name {
			continue
		}
		for _, b := range msgs {
			if err := n.ml.SendBestEffort(m, b); err != nil {
				n.st.sendErrors.Add(1)
			} else {
				n.st.sent.Add(1)
			}
		}
	}
}

// bound drops the oldest broadcasts (invalidations) beyond QueueDepth.
func (n *Node) bound() {
	if q := n.q.NumQueued(); q > n.cfg.QueueDepth {
		n.q.Prune(n.cfg.QueueDepth)
		n.st.pruned.Add(uint64(q - n.cfg.QueueDepth))
	}
}

// Invalidate drops the templates f selects here and on every peer (tether
// affinity rm). A peer spares the templates it used after now: across a
// partition, the message arrives when the other side has bound its
// clients again.
func (n *Node) Invalidate(f affinity.Filter) int {
	inv := invalidation{nonce: rand.Uint64(), at: time.Now(), svc: f.Service, client: f.Client, server: f.Server}
	msg := appendInvalidation(appendHeader(nil, kindInvalidate, n.id), inv)
	n.seenInvalidation(msg)
	n.q.QueueBroadcast(&uniqueBroadcast{msg: msg})
	n.st.queued.Add(1)
	n.bound()
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
	n.mu.Lock()
	var release []affinity.Lease
	for k, h := range n.holds {
		release = append(release, h.lease)
		delete(n.holds, k)
	}
	n.mu.Unlock()
	for _, l := range release {
		n.cfg.Table.ReleasePeer(l)
	}
	return err
}

// uniqueBroadcast is an invalidation: it replaces nothing.
type uniqueBroadcast struct{ msg []byte }

func (b *uniqueBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b *uniqueBroadcast) Message() []byte                       { return b.msg }
func (b *uniqueBroadcast) Finished()                             {}
func (b *uniqueBroadcast) UniqueBroadcast()                      {}

// seenSet remembers the last seenMax invalidations (by a hash of the
// message), so that each instance relays one only once.
type seenSet struct {
	set  map[uint64]struct{}
	ring [seenMax]uint64
	next int
}

const seenMax = 4096

// seenInvalidation says msg was seen before, and remembers it.
func (n *Node) seenInvalidation(msg []byte) bool {
	h := fnv.New64a()
	h.Write(msg)
	k := h.Sum64()
	n.mu.Lock()
	defer n.mu.Unlock()
	s := &n.seen
	if s.set == nil {
		s.set = map[uint64]struct{}{}
	}
	if _, ok := s.set[k]; ok {
		return true
	}
	delete(s.set, s.ring[s.next])
	s.ring[s.next] = k
	s.next = (s.next + 1) % seenMax
	s.set[k] = struct{}{}
	return false
}

// others is join without this instance's own addresses: one config can
// list every instance, and joining itself would make it "ready" with
// nothing.
func others(join []string, self ...netip.AddrPort) []string {
	var out []string
	for _, j := range join {
		ap, err := netip.ParseAddrPort(j)
		mine := false
		for _, s := range self {
			mine = mine || err == nil && ap.Addr().Unmap() == s.Addr().Unmap() && ap.Port() == s.Port()
		}
		if !mine {
			out = append(out, j)
		}
	}
	return out
}
