package aggregator

import (
	"testing"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestQueueWakesAtMark: items below a shard's wake mark leave the consumer asleep (the sweep
// finds them); the push that fills a shard to its mark leaves exactly one wake-up. Points and
// Kafka offsets both go through this queue: an offset used to be a channel send, which woke the
// consumer on every produce response.
func TestQueueWakesAtMark(t *testing.T) {
	for _, tc := range []struct {
		name string
		push func(a *Aggregator, i int) bool
		q    func(a *Aggregator) interface {
			queued() bool
		}
		notify func(a *Aggregator) chan struct{}
		wake   func(a *Aggregator) int
	}{
		{
			name:   "points",
			push:   func(a *Aggregator, i int) bool { return a.Add(point("s", 1, 0, t0, 0, 0, int64(i))) },
			q:      func(a *Aggregator) interface{ queued() bool } { return a.points },
			notify: func(a *Aggregator) chan struct{} { return a.points.notify },
			wake:   func(a *Aggregator) int { return a.points.shards[0].wake },
		},
		{
			name: "offsets",
			push: func(a *Aggregator, i int) bool {
				return a.Offset(pathway.Offset{Kind: pathway.KafkaProduce, Topic: "t", Value: int64(i), Time: t0.UnixNano()})
			},
			q:      func(a *Aggregator) interface{ queued() bool } { return a.offsets },
			notify: func(a *Aggregator) chan struct{} { return a.offsets.notify },
			wake:   func(a *Aggregator) int { return a.offsets.shards[0].wake },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := New(Config{QueueSize: 1 << 10})
			mark, shards := tc.wake(a), len(a.points.shards)
			if mark < 2 {
				t.Fatalf("wake mark %d: the test needs room below it", mark)
			}
			// Fewer items than the mark: whichever shards they land in, none reaches it.
			i := 0
			for ; i < mark-1; i++ {
				if !tc.push(a, i) {
					t.Fatalf("push %d refused", i)
				}
			}
			if !tc.q(a).queued() {
				t.Fatal("nothing queued after pushes below the mark")
			}
			if n := len(tc.notify(a)); n != 0 {
				t.Fatalf("%d wake-ups after %d items, below the mark %d: want none", n, i, mark)
			}
			// One more than every shard can hold below its mark: some shard reached it.
			for ; i < shards*(mark-1)+1; i++ {
				if !tc.push(a, i) {
					t.Fatalf("push %d refused", i)
				}
			}
			if n := len(tc.notify(a)); n != 1 {
				t.Fatalf("%d wake-ups after %d items in %d shards with mark %d: want 1", n, i, shards, mark)
			}
			a.Close()
		})
	}
}
