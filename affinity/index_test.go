package affinity

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// checkShard verifies a shard against an oracle: every key the oracle
// holds is found with its generation, the count agrees, and the idle list,
// walked both ways, holds exactly the oracle's idle keys in its order
// (most recently used first).
func checkShard(t *testing.T, sh *shard, gens map[key]uint32, idle []key) {
	t.Helper()
	if sh.n != len(gens) {
		t.Fatalf("shard holds %d, oracle %d", sh.n, len(gens))
	}
	for k, g := range gens {
		i, ok := sh.get(k, k.hash())
		if !ok || sh.ents[i].gen != g {
			t.Fatalf("key %v: found=%v gen %d, want gen %d", k.client(), ok, sh.ents[i].gen, g)
		}
	}
	var fwd []key
	prev := int32(none)
	for i := sh.idle.head; i != none; i = sh.ents[i].next {
		if sh.ents[i].prev != prev {
			t.Fatalf("idle list: slot %d's prev is %d, want %d", i, sh.ents[i].prev, prev)
		}
		fwd = append(fwd, sh.ents[i].key)
		prev = i
		if len(fwd) > sh.n {
			t.Fatal("idle list has a cycle")
		}
	}
	if sh.idle.tail != prev {
		t.Fatalf("idle list tail is %d, the walk ended at %d", sh.idle.tail, prev)
	}
	if !slices.Equal(fwd, idle) {
		t.Fatalf("idle list holds %d keys, want %d in order", len(fwd), len(idle))
	}
}

// The slot array against a Go map and a slice as the oracle, under random
// inserts, removals and uses, on small arrays where clusters wrap around
// the end and templates move on every removal and growth. After every
// operation every key is found, and the idle list keeps its order.
func TestSlotsAgainstOracle(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 7))
		var sh shard
		sh.init(1 << 20)
		gens := map[key]uint32{}
		var idle []key // most recently used first
		drop := func(k key) {
			idle = slices.DeleteFunc(idle, func(x key) bool { return x == k })
		}
		universe := 40 + int(seed)*7 // distinct keys, so some come back
		for op := range 2000 {
			k := makeKey(0, netip.AddrFrom4([4]byte{127, 0, byte(r.IntN(universe) >> 8), byte(r.IntN(universe))}))
			h := k.hash()
			i, ok := sh.get(k, h)
			switch {
			case !ok:
				i = sh.insert(k, h, 0, int64(op), nil)
				gens[k] = sh.ents[i].gen
				idle = append([]key{k}, idle...)
			case r.IntN(2) == 0:
				sh.remove(i)
				delete(gens, k)
				drop(k)
			default: // a connection opens and closes: most recently used
				sh.open(i, int64(op))
				sh.close(i, int64(op))
				drop(k)
				idle = append([]key{k}, idle...)
			}
			checkShard(t, &sh, gens, idle)
		}
	}
}

// Colliding homes: keys whose home is the last slot of a 16-slot array
// build one cluster that wraps to the front; removing from its middle must
// keep every other key reachable and the idle list whole.
func TestSlotClustersWrap(t *testing.T) {
	var sh shard
	sh.init(1 << 20)
	sh.grow()
	var keys []key
	for i := 0; len(keys) < 7; i++ {
		if k := makeKey(0, client(i)); sh.home(k.hash()) == 15 {
			keys = append(keys, k)
		}
	}
	gens := map[key]uint32{}
	var idle []key
	for _, k := range keys {
		i := sh.insert(k, k.hash(), 0, 0, nil)
		gens[k] = sh.ents[i].gen
		idle = append([]key{k}, idle...)
	}
	if len(sh.ents) != 16 {
		t.Fatalf("the array grew to %d slots", len(sh.ents))
	}
	for _, d := range []int{2, 0, 5} {
		i, _ := sh.get(keys[d], keys[d].hash())
		sh.remove(i)
		delete(gens, keys[d])
		idle = slices.DeleteFunc(idle, func(x key) bool { return x == keys[d] })
		checkShard(t, &sh, gens, idle)
	}
}

// The sweeper walks the idle list while removing from it, and each removal
// moves the templates after it in its cluster, the one the walk goes to
// next among them. Here every template shares one cluster, and two
// services with different timeouts alternate on the list, so the walk
// removes a template, skips the next, and so on.
func TestSweepWhileTemplatesMove(t *testing.T) {
	var sh shard
	sh.init(1 << 20)
	sh.grow()
	r := (&registry{svcs: []*serviceInfo{{timeout: 10}, {timeout: 1000}}}).finish()
	gens := map[key]uint32{}
	var idle []key
	for i := 0; len(gens) < 10; i++ {
		svc := ServiceRef(len(gens) % 2)
		k := makeKey(svc, client(i))
		if sh.home(k.hash()) != 3 {
			continue
		}
		j := sh.insert(k, k.hash(), 0, int64(len(gens)), r)
		gens[k] = sh.ents[j].gen
		if svc == 1 {
			idle = append([]key{k}, idle...)
		}
	}
	if got := sh.sweep(r, 100, sweepBudget); got != 5 {
		t.Fatalf("sweep freed %d, want the 5 templates of the short service", got)
	}
	for k := range gens {
		if k.svc == 0 {
			delete(gens, k)
		}
	}
	checkShard(t, &sh, gens, idle)
}
