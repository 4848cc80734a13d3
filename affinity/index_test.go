package affinity

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// checkShard verifies a shard against an oracle: every key the oracle
// holds is found with its generation, nothing else is held, and the counts
// of templates and of active ones agree.
func checkShard(t *testing.T, sh *shard, gens map[key]uint32, active map[key]bool) {
	t.Helper()
	if sh.n != len(gens) {
		t.Fatalf("shard holds %d, oracle %d", sh.n, len(gens))
	}
	for k, g := range gens {
		i, ok := sh.get(k, k.hash(0))
		if !ok || sh.ents[i].generation() != g {
			t.Fatalf("key %v: found=%v gen %d, want gen %d", k.client(), ok, sh.ents[i].generation(), g)
		}
	}
	held, act := 0, 0
	for i := range sh.ents {
		if e := &sh.ents[i]; !e.empty() {
			held++
			if _, ok := gens[e.key()]; !ok {
				t.Fatalf("slot %d holds %v, which the oracle does not", i, e.key().client())
			}
			if e.active() > 0 {
				act++
			}
		}
	}
	want := 0
	for _, a := range active {
		if a {
			want++
		}
	}
	if held != sh.n || act != want {
		t.Fatalf("slots hold %d (count %d), %d active, oracle %d active", held, sh.n, act, want)
	}
}

// The slot array against a Go map as the oracle, under random inserts,
// removals, opens and closes, on small arrays where clusters wrap around
// the end and templates move on every removal and growth. After every
// operation every key is found and the counts agree.
func TestSlotsAgainstOracle(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 7))
		var sh shard
		sh.init(1<<20, 0)
		gens := map[key]uint32{}
		active := map[key]bool{}
		universe := 40 + int(seed)*7 // distinct keys, so some come back
		for op := range 2000 {
			k := makeKey(0, netip.AddrFrom4([4]byte{127, 0, byte(r.IntN(universe) >> 8), byte(r.IntN(universe))}))
			h := k.hash(0)
			i, ok := sh.get(k, h)
			switch {
			case !ok:
				i = sh.insert(k, h, 0, uint32(op), nil)
				gens[k] = sh.ents[i].generation()
			case r.IntN(3) == 0:
				sh.remove(i, 0, nil)
				delete(gens, k)
				delete(active, k)
			case active[k]:
				sh.close(i, uint32(op), false, nil)
				active[k] = false
			default:
				sh.open(i, uint32(op), true, false, nil)
				active[k] = true
			}
			checkShard(t, &sh, gens, active)
		}
	}
}

// Colliding homes: keys whose home is the last slot of a 16-slot array
// build one cluster that wraps to the front; removing from its middle must
// keep every other key reachable.
func TestSlotClustersWrap(t *testing.T) {
	var sh shard
	sh.init(1<<20, 0)
	sh.grow()
	var keys []key
	for i := 0; len(keys) < 7; i++ {
		if k := makeKey(0, client(i)); sh.home(k.hash(0)) == 15 {
			keys = append(keys, k)
		}
	}
	gens := map[key]uint32{}
	for _, k := range keys {
		i := sh.insert(k, k.hash(0), 0, 0, nil)
		gens[k] = sh.ents[i].generation()
	}
	if len(sh.ents) != 16 {
		t.Fatalf("the array grew to %d slots", len(sh.ents))
	}
	for _, d := range []int{2, 0, 5} {
		i, _ := sh.get(keys[d], keys[d].hash(0))
		sh.remove(i, 0, nil)
		delete(gens, keys[d])
		checkShard(t, &sh, gens, nil)
	}
}

// The sweeper walks the slots while removing, and each removal moves the
// templates after it in its cluster back, into the slot the walk looks at
// again. Here every template shares one cluster and two services with
// different timeouts alternate in it, so the walk removes a template,
// keeps the next, and so on.
func TestSweepWhileTemplatesMove(t *testing.T) {
	var sh shard
	sh.init(1<<20, 0)
	sh.grow()
	r := (&registry{svcs: []*serviceInfo{{timeout: 10}, {timeout: 1000}}}).finish()
	gens := map[key]uint32{}
	for i := 0; len(gens) < 10; i++ {
		svc := ServiceRef(len(gens) % 2)
		k := makeKey(svc, client(i))
		if sh.home(k.hash(0)) != 3 {
			continue
		}
		j := sh.insert(k, k.hash(0), 0, uint32(len(gens)), r)
		gens[k] = sh.ents[j].generation()
	}
	if got := sh.sweep(r, 100, 0, len(sh.ents)); got != 5 {
		t.Fatalf("sweep freed %d, want the 5 templates of the short service", got)
	}
	for k := range gens {
		if k.svc == 0 {
			delete(gens, k)
		}
	}
	checkShard(t, &sh, gens, nil)
}

// At the bound an idle template goes before an active one, and an idle one
// not used again before one that was.
func TestVictimOrder(t *testing.T) {
	var sh shard
	sh.init(1<<20, 0)
	reg := &registry{svcs: []*serviceInfo{{timeout: 1000}}}
	var keys []key
	for i := range 8 {
		k := makeKey(0, client(i))
		sh.insert(k, k.hash(0), 0, 0, reg)
		keys = append(keys, k)
	}
	slot := func(k key) int32 { i, _ := sh.get(k, k.hash(0)); return i }
	// 0..5 active; 6 idle but just used; 7 idle and not used since.
	for _, k := range keys[:6] {
		sh.open(slot(k), 1, true, false, nil)
	}
	sh.open(slot(keys[6]), 1, true, false, nil)
	sh.close(slot(keys[6]), 1, false, nil)
	if v := sh.victim(1, reg); sh.ents[v].key() != keys[7] {
		t.Fatalf("victim %v, want the idle, unused %v", sh.ents[v].key().client(), keys[7].client())
	}
	sh.remove(slot(keys[7]), 0, nil)
	// Only 6 is idle now: used again, it still goes before any active one.
	if v := sh.victim(1, reg); sh.ents[v].key() != keys[6] {
		t.Fatalf("victim %v, want the only idle one, %v", sh.ents[v].key().client(), keys[6].client())
	}
	sh.remove(slot(keys[6]), 0, nil)
	// None idle: an active one goes.
	if v := sh.victim(1, reg); v == none || sh.ents[v].active() == 0 {
		t.Fatalf("with every template active, victim %d", v)
	}
}
