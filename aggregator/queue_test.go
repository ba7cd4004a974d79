package aggregator

import (
	"testing"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// queueProbe is what TestQueueWakesAtMark reads of a queue, whatever it carries.
type queueProbe struct {
	queued func() bool
	notify chan struct{}
	mark   int // a shard's wake mark
	shards int
}

func probe[T any](q *queue[T]) queueProbe {
	return queueProbe{queued: q.queued, notify: q.notify, mark: q.shards[0].wake, shards: len(q.shards)}
}

// TestQueueWakesAtMark: items below a shard's wake mark leave the consumer asleep (the sweep
// finds them); the push that fills a shard to its mark leaves exactly one wake-up. Points and
// Kafka offsets both go through this queue: an offset used to be a channel send, which woke a
// waiting consumer on any produce response.
func TestQueueWakesAtMark(t *testing.T) {
	for _, tc := range []struct {
		name  string
		push  func(a *Aggregator, i int) bool
		probe func(a *Aggregator) queueProbe
	}{
		{
			name:  "points",
			push:  func(a *Aggregator, i int) bool { return a.Add(point("s", 1, 0, t0, 0, 0, int64(i))) },
			probe: func(a *Aggregator) queueProbe { return probe(a.points) },
		},
		{
			name: "offsets",
			push: func(a *Aggregator, i int) bool {
				return a.Offset(pathway.Offset{Kind: pathway.KafkaProduce, Topic: "t", Value: int64(i), Time: t0.UnixNano()})
			},
			probe: func(a *Aggregator) queueProbe { return probe(a.offsets) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := New(Config{QueueSize: 1 << 10})
			q := tc.probe(a)
			if q.mark < 2 {
				t.Fatalf("wake mark %d: the test needs room below it", q.mark)
			}
			// Fewer items than the mark: whichever shards they land in, none reaches it.
			i := 0
			for ; i < q.mark-1; i++ {
				if !tc.push(a, i) {
					t.Fatalf("push %d refused", i)
				}
			}
			if !q.queued() {
				t.Fatal("nothing queued after pushes below the mark")
			}
			if n := len(q.notify); n != 0 {
				t.Fatalf("%d wake-ups after %d items, below the mark %d: want none", n, i, q.mark)
			}
			// One more than every shard can hold below its mark: some shard reached it.
			for ; i < q.shards*(q.mark-1)+1; i++ {
				if !tc.push(a, i) {
					t.Fatalf("push %d refused", i)
				}
			}
			if n := len(q.notify); n != 1 {
				t.Fatalf("%d wake-ups after %d items in %d shards with mark %d: want 1", n, i, q.shards, q.mark)
			}
			a.Close()
		})
	}
}
