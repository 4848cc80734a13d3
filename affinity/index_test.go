package affinity

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// The index against a Go map as the oracle, under random inserts and
// deletes, on small tables where clusters wrap around the end of the slot
// array. After every operation every key the oracle knows is found at its
// slot and every deleted key is gone.
func TestIndexAgainstMap(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 7))
		var x index
		var ents []entry
		oracle := map[key]int32{}
		var free []int32
		universe := 40 + int(seed)*7 // distinct keys, so some come back
		for op := range 3000 {
			k := makeKey(0, netip.AddrFrom4([4]byte{127, 0, byte(r.IntN(universe) >> 8), byte(r.IntN(universe))}))
			h := k.hash()
			if slot, ok := oracle[k]; ok {
				x.del(k, h, ents)
				delete(oracle, k)
				free = append(free, slot)
			} else {
				var slot int32
				if len(free) > 0 {
					slot, free = free[len(free)-1], free[:len(free)-1]
				} else {
					ents = append(ents, entry{})
					slot = int32(len(ents) - 1)
				}
				ents[slot].key = k
				x.put(h, slot, ents)
				oracle[k] = slot
			}
			if x.n != len(oracle) {
				t.Fatalf("seed %d op %d: index holds %d, oracle %d", seed, op, x.n, len(oracle))
			}
			for ok, slot := range oracle {
				if got, found := x.get(ok, ok.hash(), ents); !found || got != slot {
					t.Fatalf("seed %d op %d: key %v at %d, found %v at %d", seed, op, ok.client(), slot, found, got)
				}
			}
			if _, found := x.get(k, h, ents); found != (oracle[k] != 0 || hasKey(oracle, k)) {
				t.Fatalf("seed %d op %d: key %v found=%v after its operation", seed, op, k.client(), found)
			}
		}
	}
}

func hasKey(m map[key]int32, k key) bool { _, ok := m[k]; return ok }

// Colliding homes: keys whose home is the last slot of a 16-slot table
// build one cluster that wraps to the front; deleting from its middle must
// keep every other key reachable.
func TestIndexClustersWrap(t *testing.T) {
	x := index{slots: make([]uint64, 16)}
	var ents []entry
	for i := 0; len(ents) < 7; i++ {
		k := makeKey(0, client(i))
		if x.home(k.hash()) == 15 {
			ents = append(ents, entry{key: k})
		}
	}
	for i := range ents {
		x.put(ents[i].key.hash(), int32(i), ents)
	}
	if len(x.slots) != 16 {
		t.Fatalf("the table grew to %d slots", len(x.slots))
	}
	deleted := map[int]bool{}
	for _, d := range []int{2, 0, 5} {
		x.del(ents[d].key, ents[d].key.hash(), ents)
		deleted[d] = true
		for j := range ents {
			got, ok := x.get(ents[j].key, ents[j].key.hash(), ents)
			if deleted[j] {
				if ok {
					t.Fatalf("deleted key %d still found", j)
				}
				continue
			}
			if !ok || got != int32(j) {
				t.Fatalf("after deleting %v: key %d found=%v at %d", deleted, j, ok, got)
			}
		}
	}
}
