package lruset

import (
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Set is a bounded set: at the bound the least recently used goes. What
// it pushes out is handed back to the caller, to be closed after the lock
// is released (never close a socket or release a template under this
// lock).
type Set[K comparable, V comparable] struct {
	mu      sync.Mutex
	lru     *simplelru.LRU[K, V]
	evicted []V // filled by the LRU's callback under mu, emptied before mu is released
}

func New[K comparable, V comparable](size int) *Set[K, V] {
	s := &Set[K, V]{}
	s.lru, _ = simplelru.NewLRU[K, V](max(size, 1), func(_ K, v V) { s.evicted = append(s.evicted, v) })
	return s
}

func (s *Set[K, V]) Get(k K) (V, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Get(k)
}

// Add stores v and returns what the bound pushed out.
func (s *Set[K, V]) Add(k K, v V) []V {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lru.Add(k, v)
	out := s.evicted
	s.evicted = nil
	return out
}

// Remove drops k if it still holds v (a newer flow may have taken k).
func (s *Set[K, V]) Remove(k K, v V) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.lru.Peek(k); ok && cur == v {
		s.lru.Remove(k)
	}
	s.evicted = nil
}

// RemoveOldest drops the least recently used entry and returns it.
func (s *Set[K, V]) RemoveOldest() (V, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, v, ok := s.lru.RemoveOldest()
	s.evicted = nil
	return v, ok
}

// RemoveIf drops every entry match selects and returns them.
func (s *Set[K, V]) RemoveIf(match func(V) bool) []V {
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

// Drain empties the set and returns what it held.
func (s *Set[K, V]) Drain() []V {
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
func (s *Set[K, V]) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Len()
}

// Resize sets the bound and returns what a smaller one pushed out.
func (s *Set[K, V]) Resize(size int) []V {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lru.Resize(max(size, 1))
	out := s.evicted
	s.evicted = nil
	return out
}
