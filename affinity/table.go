package affinity

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultCapacity bounds a table whose Options leave Capacity zero. At 48
// bytes a template when full (32 bytes a slot, two thirds of the slots
// used) it is about 50 MB.
const DefaultCapacity = 1 << 20

// Options configure a Table. The zero value is a working table.
type Options struct {
	// Capacity is the most templates the table holds. Zero means
	// DefaultCapacity. The bound is kept per shard, so the table evicts at
	// Capacity/Shards in the fullest shard.
	Capacity int
	// Shards is the number of independently locked parts, rounded up to a
	// power of two. Zero picks 64 per CPU, but no fewer than 1024 templates
	// a shard, so that small tables evict in exact LRU order. Many: two
	// CPUs' hits on random templates then rarely meet on one shard's lock
	// (hit + release on 2 goroutines, 1 M templates: 0.83-1.03x one
	// goroutine's throughput at 4 per CPU, 1.21-1.31x at 64).
	Shards int
	// Now is the clock; nil means time.Now. Tests inject one.
	Now func() time.Time
	// SweepInterval is how often expired templates are freed in the
	// background (lookups never return an expired one in any case). Zero
	// means one second; negative disables the sweeper (tests call Sweep).
	SweepInterval time.Duration

	// idleTicks is how many ticks the clock runs before it sleeps
	// (clock.go); 0 means clockIdleTicks. Tests set it.
	idleTicks int
	// arenaMin is the least arena mapped (huge.go); 0 means arenaMin.
	// Tests set it, to put small tables' arrays in an arena.
	arenaMin int
}

func (o Options) capacity() int {
	if o.Capacity <= 0 {
		return DefaultCapacity
	}
	return o.Capacity
}

func (o Options) shards() int {
	n := o.Shards
	if n <= 0 {
		n = 64 * runtime.GOMAXPROCS(0)
		for n > 1 && o.capacity()/n < 1024 {
			n /= 2
		}
	}
	p := 1
	for p < n {
		p *= 2
	}
	return p
}

func (o Options) sweepInterval() time.Duration {
	if o.SweepInterval == 0 {
		return time.Second
	}
	return o.SweepInterval
}

// Table is the bounded, expiring, sharded persistence table. Its methods are
// safe for concurrent use.
type Table struct {
	now      func() time.Time
	injected bool
	epoch    time.Time
	shards   []shard
	mask     uint64 // len(shards)-1
	arena    []byte // the shards' large slot arrays (huge.go); nil: the heap
	seed     uint64 // the hash seed (key.hash)
	// watched is the kinds of journal followers there are (fast.go):
	// with none, a lock-free change needs no note.
	watched atomic.Uint32

	regMu sync.Mutex // serialises registry writers
	reg   atomic.Pointer[registry]

	emitMu   sync.Mutex
	lastEmit Stats

	followMu  sync.Mutex
	followers [maxFollowers]uint32 // slots of sh.jr in use: their watch kind, 0 if free

	// clock is the time in ticks since epoch, kept by the table's own
	// goroutine (a coarse clock, as HAProxy's and nginx's cached now):
	// a lookup loads it instead of reading the clock. clockAsleep while
	// the goroutine does not tick (clock.go); wake tells it to.
	clock     atomic.Uint32
	wake      chan struct{}
	idleTicks int
	closed    atomic.Bool // the goroutine has stopped: the clock never ticks again

	cancel context.CancelFunc
	done   chan struct{}
}

// tick is the table's unit of time: expiry is exact to a tick.
const tick = 10 * time.Millisecond

// ticks is d in ticks, rounded up, so that a template never expires early.
func ticks(d time.Duration) uint32 {
	return uint32(min((d+tick-1)/tick, maxTicks))
}

// maxTicks bounds a timeout in ticks: ages are taken modulo 2^32 ticks
// (497 days), so a timeout must stay well below that.
const maxTicks = 1 << 31

// MaxTimeout is the longest persistence timeout a table keeps exactly.
const MaxTimeout = maxTicks * tick

// New returns an empty table. Close stops its sweeper.
func New(o Options) *Table {
	t := &Table{now: o.Now, injected: o.Now != nil, done: make(chan struct{}), wake: make(chan struct{}, 1), idleTicks: o.idleTicks}
	if t.idleTicks <= 0 {
		t.idleTicks = clockIdleTicks
	}
	if t.injected {
		t.clock.Store(clockAsleep) // nowTicks reads the injected clock
	}
	if t.now == nil {
		t.now = time.Now
	}
	t.epoch = t.now()
	n := o.shards()
	per := (o.capacity() + n - 1) / n
	t.shards = make([]shard, n)
	t.mask = uint64(n - 1)
	t.seed = rand.Uint64()
	for i := range t.shards {
		t.shards[i].init(per, t.seed)
	}
	l := t.shards[0].maxLen()
	if ents, m := mapArena(n*l, cmp.Or(o.arenaMin, arenaMin)); m != nil {
		t.arena = m
		for i := range t.shards {
			t.shards[i].region = ents[i*l : (i+1)*l : (i+1)*l]
		}
	}
	// The arena goes with the table. The cleanup holds the shards and
	// the mapping, not the table, so the table can be collected.
	runtime.AddCleanup(t, func(a arenaOwner) {
		for i := range a.shards {
			a.shards[i].release()
		}
		unmapArena(a.m)
	}, arenaOwner{t.shards, t.arena})
	t.reg.Store((&registry{byID: map[Service]ServiceRef{}}).finish())
	ctx, cancel := context.WithCancel(context.Background())
	t.cancel = cancel
	if iv := o.sweepInterval(); iv > 0 || !t.injected {
		go t.run(ctx, iv)
	} else {
		close(t.done)
	}
	return t
}

// Close stops the table's goroutine (its clock and sweeper) and waits for
// it. The table stays usable; nothing frees expired templates until
// lookups or evictions find them.
func (t *Table) Close() error {
	t.cancel()
	<-t.done
	return nil
}

func (t *Table) injectedTicks() uint32 { return uint32(t.now().Sub(t.epoch) / tick) }

// Picker chooses a real server for a client that has no usable template:
// the service's scheduler. The table calls it without holding a lock.
type Picker interface {
	Pick(client netip.Addr) (netip.AddrPort, error)
}

// Lease is one connection's hold on a template, returned by GetOrBind and
// given back to Release when the connection closes.
//
// It is 32 bytes in four fields, the most the compiler keeps in registers
// (a larger struct lives on the stack, and is copied there at each
// return): the server is a pointer into the service's server list, which
// is never changed once published, and the template is named by its hash
// and place, not its key. A hit that built the 72-byte Lease of before
// spent a third of its time on those copies (README, The persistence table).
type Lease struct {
	srv *netip.AddrPort // the real server; nil in the zero Lease
	// Hit says the template existed and was honoured.
	Hit bool
	// h is the template's hash: its shard, and where a search for it
	// starts if it has moved. The generation alone says which template
	// a slot holds (a shard numbers its templates).
	h uint64
	// at is where the template was (high 32 bits; it may have moved
	// since) and its generation (low; 0 in the zero Lease).
	at uint64
}

// Server is the real server the client goes to (the zero AddrPort for
// the zero Lease).
func (l Lease) Server() netip.AddrPort {
	if l.srv == nil {
		return netip.AddrPort{}
	}
	return *l.srv
}

// leaseAt is a Lease's at.
func leaseAt(slot int32, gen uint32) uint64 { return uint64(uint32(slot))<<32 | uint64(gen) }

// slot and gen are the parts of l's at.
func (l Lease) slot() int32 { return int32(l.at >> 32) }
func (l Lease) gen() uint32 { return uint32(l.at) }

// shardOf is k's hash and the shard that holds k.
func (t *Table) shardOf(k key) (uint64, *shard) {
	h := k.hash(t.seed)
	return h, t.shardAt(h)
}

// shardAt is the shard of the keys that hash to h.
func (t *Table) shardAt(h uint64) *shard { return &t.shards[h&t.mask] }

// GetOrBind finds the template of (service, masked client) and counts a new
// connection on it. On a hit whose server is still usable it resets the
// template's timer and returns the bound server. On a miss, an expired
// template or an unusable server it asks p for a server and binds it.
func (t *Table) GetOrBind(ref ServiceRef, client netip.Addr, p Picker) (Lease, error) {
	// An IPv4 client's hit, in a small frame: the rest (getOrBind) needs
	// a large one, and the next hit's load of its slot cannot start
	// before this one's instructions are under way.
	if r := t.reg.Load(); int(ref) < len(r.svcs) && client.Is4() {
		if svc := r.svcs[ref]; !svc.removed {
			k := key4(ref, svc.cfg.Mask, client.As4())
			h, sh := t.shardOf(k)
			if i, gen, srv, ok := sh.hit(t, k, h, t.nowTicks(), svc); ok {
				return hitLease(svc, h, i, gen, srv), nil
			}
			return t.getOrBind(ref, client, p, true)
		}
	}
	return t.getOrBind(ref, client, p, false)
}

// getOrBind is GetOrBind past the lock-free hit, when it was tried.
func (t *Table) getOrBind(ref ServiceRef, client netip.Addr, p Picker, tried bool) (Lease, error) {
	r := t.reg.Load()
	svc, err := r.service(ref)
	if err != nil {
		return Lease{}, err
	}
	k := clientKey(ref, svc.cfg.Mask, client)
	h, sh := t.shardOf(k)
	now := t.nowTicks()

	if !tried {
		if i, gen, srv, ok := sh.hit(t, k, h, now, svc); ok {
			return hitLease(svc, h, i, gen, srv), nil
		}
	}
	sh.mu.Lock()
	if i, ok := sh.get(k, h); ok {
		e := &sh.ents[i]
		switch {
		case e.active() == 0 && e.age(now) >= svc.timeout && e.freezeIdle():
			sh.remove(i, now, r)
			sh.stats.Expirations++
		case svc.usable(uint32(e.server())):
			if svc.full(e.local()) {
				sh.stats.ClientLimited++
				sh.mu.Unlock()
				return Lease{}, ErrClientLimit
			}
			sh.open(i, now, true, false, r)
			sh.hits.Add(1)
			l := Lease{srv: &svc.servers[e.server()], Hit: true, h: h, at: leaseAt(i, e.generation())}
			sh.mu.Unlock()
			return l, nil
		}
	}
	sh.stats.Misses++
	sh.mu.Unlock()

	server, err := p.Pick(client)
	if err != nil {
		return Lease{}, err
	}
	// The registry may have changed while the scheduler ran; bind against
	// the newest one.
	r = t.reg.Load()
	svc, err = r.service(ref)
	if err != nil {
		return Lease{}, err
	}
	sv, ok := svc.index[netip.AddrPortFrom(server.Addr().Unmap(), server.Port())]
	if !ok {
		return Lease{}, fmt.Errorf("%w: %s in %s", ErrUnknownServer, server, svc.id)
	}
	now = t.nowTicks()

	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, ok := sh.get(k, h)
	if ok {
		e := &sh.ents[i]
		// Another connection of the same client group bound first: join it,
		// so that the group stays on one server.
		live, held := e.hold(now, svc.timeout)
		if !live || !svc.usable(uint32(e.server())) {
			e.setServer(sv)
			sh.stats.Binds++
			if e.active() > 0 { // open below notes only a template that was idle
				sh.note(e, Busy, now, r, toMirror|toCluster)
			}
		} else if svc.full(e.local()) {
			sh.stats.ClientLimited++
			return Lease{}, ErrClientLimit
		}
		if held {
			e.thaw()
		}
	} else {
		i = sh.insert(k, h, sv, now, r)
		sh.stats.Binds++
	}
	sh.open(i, now, ok, false, r) // joining a template another connection just bound is a use
	e := &sh.ents[i]
	return Lease{srv: &svc.servers[e.server()], h: h, at: leaseAt(i, e.generation())}, nil
}

// Release gives back a lease when its connection closes; call it once per
// lease. The template's timer starts when its last connection is released.
// Releasing a lease whose template has since been evicted or invalidated
// does nothing, and so does releasing the zero Lease (a connection that
// held no template), so callers need not remember which they have.
//
// Release is small enough to inline, and passes on the lease's parts, not
// the Lease: a call that took the 72-byte Lease by value had the caller
// copy it to the stack and the callee read it back, and the next
// release's slot miss no longer overlapped this one's (1 M templates,
// uniform: 225 ns a release against 85 with the parts in registers).
func (t *Table) Release(l Lease) {
	if l.at != 0 { // the zero Lease: nothing was held, no lock is taken
		t.release(l.h, l.slot(), l.gen())
	}
}

func (t *Table) release(h uint64, slot int32, gen uint32) {
	sh := t.shardAt(h)
	now := t.nowTicks()
	if sh.fastRelease(t, h, slot, gen, now) {
		return
	}
	sh.releaseLocked(t, h, slot, gen, now, false)
}

// releaseLocked gives back a lease under its shard's lock.
func (sh *shard) releaseLocked(t *Table, h uint64, slot int32, gen uint32, now uint32, peer bool) {
	sh.mu.Lock()
	i, ok := slot, int(slot) < len(sh.ents) && sh.ents[slot].generation() == gen
	if !ok { // moved by a removal or a growth, or gone
		i, ok = sh.getGen(h, gen)
	}
	if ok {
		if e := &sh.ents[i]; peer && e.peers() > 0 || !peer && e.local() > 0 {
			sh.close(i, now, peer, t.reg.Load())
		}
	}
	sh.mu.Unlock()
}

// Sweep frees the expired idle templates now; the table's goroutine calls
// it every SweepInterval. It walks every slot, a chunk at a time so that no
// lock is held long, and returns how many templates went.
func (t *Table) Sweep() int { return t.sweep(t.nowTicks()) }

// sweep is Sweep at time now.
func (t *Table) sweep(now uint32) int {
	r := t.reg.Load()
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		for from := 0; ; from += sweepChunk {
			sh.mu.Lock()
			if from >= len(sh.ents) {
				sh.mu.Unlock()
				break
			}
			n += sh.sweep(r, now, from, from+sweepChunk)
			sh.mu.Unlock()
		}
	}
	return n
}

// sweepChunk bounds the slots one sweep looks at under one lock.
const sweepChunk = 4096

// Len is the number of templates held, expired ones not yet swept included.
func (t *Table) Len() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		n += sh.n
		sh.mu.Unlock()
	}
	return n
}

// invalidate drops every template that match selects and counts them as
// invalidations. match runs under shard locks: it must be the package's own.
func (t *Table) invalidate(match func(*entry) bool) int {
	n := 0
	r, now := t.reg.Load(), t.nowTicks()
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		m := 0
		for j := 0; j < len(sh.ents); {
			if e := &sh.ents[j]; !e.empty() && match(e) {
				// The gap may be filled from further on: look again.
				sh.remove(int32(j), now, r)
				m++
				continue
			}
			j++
		}
		sh.stats.Invalidations += uint64(m)
		sh.mu.Unlock()
		n += m
	}
	return n
}

// capacity is the most templates the table holds.
func (t *Table) capacity() int {
	n := 0
	for i := range t.shards {
		n += t.shards[i].cap
	}
	return n
}
