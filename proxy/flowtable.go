package proxy

import (
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// lruSet is a bounded set of flows, UDP's stand-in for connections: at the
// bound the least recently used goes, so a flood of spoofed sources cannot
// grow memory. What it pushes out is handed back to the caller, to be
// closed after the lock is released (never close a socket or release a
// template under this lock).
type lruSet[K comparable, V comparable] struct {
	mu      sync.Mutex
	lru     *simplelru.LRU[K, V]
	evicted []V // filled by the LRU's callback under mu, emptied before mu is released
}

func newLRUSet[K comparable, V comparable](size int) *lruSet[K, V] {
	s := &lruSet[K, V]{}
	s.lru, _ = simplelru.NewLRU[K, V](max(size, 1), func(_ K, v V) { s.evicted = append(s.evicted, v) })
	return s
}

func (s *lruSet[K, V]) get(k K) (V, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Get(k)
}

// add stores v and returns what the bound pushed out.
func (s *lruSet[K, V]) add(k K, v V) []V {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lru.Add(k, v)
	out := s.evicted
	s.evicted = nil
	return out
}

// remove drops k if it still holds v (a newer flow may have taken k).
func (s *lruSet[K, V]) remove(k K, v V) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.lru.Peek(k); ok && cur == v {
		s.lru.Remove(k)
	}
	s.evicted = nil
}

// removeOldest drops the least recently used entry and returns it.
func (s *lruSet[K, V]) removeOldest() (V, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, v, ok := s.lru.RemoveOldest()
	s.evicted = nil
	return v, ok
}

// removeIf drops every entry match selects and returns them.
func (s *lruSet[K, V]) removeIf(match func(V) bool) []V {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []V
	for _, k := range s.lru.Keys() {
		if v, ok := s.lru.Peek(k); ok && match(v) {
			s.lru.Remove(k)
			out = append(out, v)
		}
	}
	s.evicted = nil
	return out
}

// drain empties the set and returns what it held.
func (s *lruSet[K, V]) drain() []V {
	s.mu.Lock()
	defer s.mu.Unlock()
	var all []V
	for _, k := range s.lru.Keys() {
		if v, ok := s.lru.Peek(k); ok {
			all = append(all, v)
		}
	}
	s.lru.Purge()
	s.evicted = nil
	return all
}

// Len is the number of flows held.
func (s *lruSet[K, V]) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Len()
}

// resize sets the bound and returns what a smaller one pushed out.
func (s *lruSet[K, V]) resize(size int) []V {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lru.Resize(max(size, 1))
	out := s.evicted
	s.evicted = nil
	return out
}
