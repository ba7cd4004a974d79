package proxy

import (
	"iter"
	"maps"
	"sync"
)

// RecentMap is a map bounded to the keys used most recently, for the state protocols learn from
// traffic (groups per client, queue URLs, shard iterators). It keeps two generations of at most
// limit/2 keys: when the current one fills it becomes the previous one and the older is dropped,
// and a key read from the previous generation moves back into the current one. A key in use
// therefore survives any number of new keys, and one left unused for a whole generation is
// forgotten; emptying the whole map at its limit would forget the busy keys with the idle ones.
// It is not safe for concurrent use.
type RecentMap[K comparable, V any] struct {
	genMax   int
	current  map[K]V
	previous map[K]V
}

// NewRecentMap returns a map that holds at most limit keys (at least 2).
func NewRecentMap[K comparable, V any](limit int) *RecentMap[K, V] {
	return &RecentMap[K, V]{genMax: max(limit/2, 1), current: make(map[K]V)}
}

// Get returns k's value and marks k as used. A key found in the previous generation is moved
// back as k, which the map then keeps: k must not share memory with more than it needs.
func (m *RecentMap[K, V]) Get(k K) (V, bool) {
	if v, ok := m.current[k]; ok {
		return v, true
	}
	v, ok := m.previous[k]
	if ok {
		delete(m.previous, k)
		m.Put(k, v)
	}
	return v, ok
}

// Put sets k's value and marks k as used.
func (m *RecentMap[K, V]) Put(k K, v V) {
	if _, ok := m.current[k]; !ok && len(m.current) >= m.genMax {
		m.previous, m.current = m.current, make(map[K]V, m.genMax)
	}
	delete(m.previous, k)
	m.current[k] = v
}

// Delete forgets k.
func (m *RecentMap[K, V]) Delete(k K) {
	delete(m.current, k)
	delete(m.previous, k)
}

// Len is the number of keys held, at most the limit.
func (m *RecentMap[K, V]) Len() int { return len(m.current) + len(m.previous) }

// All yields every key and value held, without marking them used.
func (m *RecentMap[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for k, v := range maps.All(m.current) {
			if !yield(k, v) {
				return
			}
		}
		for k, v := range maps.All(m.previous) {
			if !yield(k, v) {
				return
			}
		}
	}
}

// FirstSeen is a set of the keys seen most recently (a RecentMap), safe for concurrent use, for
// what a front logs once per client.
type FirstSeen[K comparable] struct {
	mu sync.Mutex
	m  *RecentMap[K, struct{}]
}

// NewFirstSeen returns a FirstSeen that remembers at most limit keys.
func NewFirstSeen[K comparable](limit int) *FirstSeen[K] {
	return &FirstSeen[K]{m: NewRecentMap[K, struct{}](limit)}
}

// Add reports whether k is new, remembering it. A nil FirstSeen remembers nothing: every key is new.
func (s *FirstSeen[K]) Add(k K) bool {
	if s == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m.Get(k); ok {
		return false
	}
	s.m.Put(k, struct{}{})
	return true
}

// Has reports whether k is among the keys used most recently (the current generation), and
// keeps nothing of k; a nil FirstSeen remembers nothing. For a caller that copies a new key
// before Add keeps it: only the first time. A key found only in the previous generation reads as
// not there: moving it back keeps the key given (Get), which must be the caller's copy, given to
// Add, not k, which may share memory with what it came from (a request's header).
func (s *FirstSeen[K]) Has(k K) bool {
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m.current[k]
	return ok
}

// Keys returns the keys remembered, in no order (none for a nil FirstSeen).
func (s *FirstSeen[K]) Keys() []K {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var ks []K
	for k := range s.m.All() {
		ks = append(ks, k)
	}
	return ks
}
