package proxy

import "sync/atomic"

// Budget bounds what all connections of a front hold together of one kind (checkpoints awaiting
// an answer, offsets, tags): limits per connection or per channel alone let memory grow with the
// number of connections. Each connection keeps its part in a Share; the zero Share is ready.
type Budget struct {
	Max  int64
	used atomic.Int64
}

// Share is one connection's part of a Budget.
type Share struct{ held atomic.Int64 }

// Held is what the share holds.
func (s *Share) Held() int64 { return s.held.Load() }

// Take adds n to s if the budget has room for it, and reports whether it did.
func (b *Budget) Take(s *Share, n int64) bool {
	if b.used.Add(n) > b.Max {
		b.used.Add(-n)
		return false
	}
	s.held.Add(n)
	return true
}

// Give returns n that s held.
func (b *Budget) Give(s *Share, n int64) {
	if n > 0 {
		s.held.Add(-n)
		b.used.Add(-n)
	}
}

// Release returns everything s still holds: a connection that ends gives back its part, so a
// release some path missed costs no more than that connection's life.
func (b *Budget) Release(s *Share) { b.used.Add(-s.held.Swap(0)) }

// Used is what all shares hold.
func (b *Budget) Used() int64 { return b.used.Load() }
