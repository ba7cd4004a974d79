package aggregator

import (
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"
)

// queue is a bounded hand-off from the data path to the aggregating goroutine (points, and Kafka
// offsets): a few mutex-protected slices (shards) so that goroutines adding at once rarely meet
// on one lock, and the consumer takes a whole shard per lock by swapping slices instead of
// receiving item by item. A channel costs a lock on both sides of every item, bounced between
// cores under load, and each send to a waiting consumer wakes it: offsets went through one, and
// woke the aggregator on many of the produce responses (dsmbench kafka, one 100k-record round
// through the proxy, about 1,000 produce requests, 2026-12-05: the aggregator went to sleep 685
// times with the channel, 399 without).
type queue[T any] struct {
	shards []shard[T]
	// notify has room for one signal: a push that fills a shard to its wake mark leaves one.
	// Below the mark the consumer finds items on its periodic sweep, so a steady trickle does
	// not cost a goroutine wake-up (a futex call) per item.
	notify chan struct{}
	// spare is the consumer's empty slice, swapped into a shard by drain; only the consumer
	// touches it, under its own lock.
	spare []T
}

type shard[T any] struct {
	mu    sync.Mutex
	buf   []T
	n     atomic.Int32 // len(buf), readable without the lock
	limit int
	wake  int      // len(buf) at which a push wakes the consumer
	_     [64]byte // keep neighbouring shards' locks off one cache line
}

func newQueue[T any](size int) *queue[T] {
	n := 1
	for n < 2*runtime.GOMAXPROCS(0) && n < 64 {
		n *= 2
	}
	n = min(n, size)
	q := &queue[T]{shards: make([]shard[T], n), notify: make(chan struct{}, 1)}
	for i := range q.shards {
		q.shards[i].limit = size / n
		if i < size%n {
			q.shards[i].limit++
		}
		q.shards[i].wake = max(1, min(q.shards[i].limit/4, wakeMark))
		// Allocated up front, like a channel's buffer: pushing never allocates.
		q.shards[i].buf = make([]T, 0, q.shards[i].limit)
	}
	q.spare = make([]T, 0, q.shards[0].limit)
	return q
}

// firstShard is where the calling goroutine starts looking for room. The address of a local
// variable tells goroutines apart (each has its own stack, 2 KiB or more, so the bits above the
// 10th differ) without any shared counter to contend on. It only picks where to start, so a moved
// stack or a collision costs nothing but a probe.
func (q *queue[T]) firstShard() int {
	var here byte
	h := uintptr(unsafe.Pointer(&here)) >> 10
	return int((uint64(h) * 0x9E3779B97F4A7C15 >> 32) % uint64(len(q.shards)))
}

// push queues p, or reports false when every shard is full: it never waits for the consumer to
// make room, only, briefly, for another producer's append.
func (q *queue[T]) push(p *T) bool {
	n := len(q.shards)
	start := q.firstShard()
	// First pass: any shard whose lock is free, starting with this goroutine's own. Second pass:
	// wait for the locks, so a point is refused only when every shard is full. Full shards are
	// skipped without locking, which keeps refusing cheap when the consumer is behind.
	for pass := 0; pass < 2; pass++ {
		for i := 0; i < n; i++ {
			s := &q.shards[(start+i)%n]
			if int(s.n.Load()) >= s.limit {
				continue
			}
			if pass == 0 {
				if !s.mu.TryLock() {
					continue
				}
			} else {
				s.mu.Lock()
			}
			if q.putUnlock(s, p) {
				return true
			}
		}
	}
	return false
}

// pushAll queues as many of ps as there is room for, taking each shard's lock once for a run of
// items rather than once per item, and returns how many it queued (a prefix of ps).
func (q *queue[T]) pushAll(ps []T) int {
	n := len(q.shards)
	start := q.firstShard()
	done := 0
	for i := 0; i < n && done < len(ps); i++ {
		s := &q.shards[(start+i)%n]
		if int(s.n.Load()) >= s.limit {
			continue
		}
		s.mu.Lock()
		k := min(s.limit-len(s.buf), len(ps)-done)
		before := len(s.buf)
		s.buf = append(s.buf, ps[done:done+k]...)
		s.n.Store(int32(len(s.buf)))
		wake := before < s.wake && len(s.buf) >= s.wake
		s.mu.Unlock()
		done += k
		if wake {
			q.signal()
		}
	}
	return done
}

// wakeMark caps the points a shard collects before a push wakes the consumer. Each wake-up is a
// thread hand-off (futex, context switch), which on a busy proxy is a measurable share of its CPU:
// at 128 a Kafka produce of 4 x 100 records woke the consumer on every request; 2048 lets one
// wake-up take a dozen requests' points (dsmbench kafka: 11% fewer context switches, 4% less
// proxy CPU) and is still an eighth of a default shard, far from its limit between sweeps.
const wakeMark = 2048

// putUnlock appends p to the locked shard s if it has room, unlocks it, and wakes the consumer
// when s reaches its wake mark.
func (q *queue[T]) putUnlock(s *shard[T], p *T) bool {
	if len(s.buf) >= s.limit {
		s.mu.Unlock()
		return false
	}
	s.buf = append(s.buf, *p)
	s.n.Store(int32(len(s.buf)))
	wake := len(s.buf) == s.wake
	s.mu.Unlock()
	if wake {
		q.signal()
	}
	return true
}

// signal leaves the consumer a wake-up unless one is already waiting.
func (q *queue[T]) signal() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// drain hands every queued item to fold, a shard at a time: it swaps the shard's slice with the
// spare (one lock per shard) and keeps the emptied slice as the next spare, so steady state
// allocates nothing. Only the consumer calls it, and never from two goroutines at once.
func (q *queue[T]) drain(fold func(*T)) {
	for i := range q.shards {
		s := &q.shards[i]
		s.mu.Lock()
		batch := s.buf
		s.buf = q.spare[:0]
		s.n.Store(0)
		s.mu.Unlock()
		for j := range batch {
			fold(&batch[j])
		}
		clear(batch) // drop references (services, tags) until the slice is reused
		q.spare = batch
	}
}

// queued reports whether any shard holds items, without locking.
func (q *queue[T]) queued() bool {
	for i := range q.shards {
		if q.shards[i].n.Load() > 0 {
			return true
		}
	}
	return false
}
