package kafka

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// stallingRecorder records offsets; while stalled, Add does not return (an observation worker
// that has fallen behind).
type stallingRecorder struct {
	stalled atomic.Bool
	release chan struct{}
	mu      sync.Mutex
	offsets []pathway.Offset
	points  []pathway.Point
}

func (o *stallingRecorder) Add(pt pathway.Point) bool {
	o.mu.Lock()
	o.points = append(o.points, pt)
	o.mu.Unlock()
	if o.stalled.Load() {
		<-o.release
	}
	return true
}

func (o *stallingRecorder) Offset(off pathway.Offset) bool {
	o.mu.Lock()
	o.offsets = append(o.offsets, off)
	o.mu.Unlock()
	return true
}

// TestHighWatermarkTimedAtItsAnswer: a fetch answer waits for observation in a queue, and its
// topic may be deleted meanwhile. Its high watermark is the log end when the broker answered, so
// it carries the time the answer came, not the time it was observed: stamped after the deletion,
// the deleted topic's old log end came back into /dsm and /metrics (a view that forgets offsets
// seen before a deletion kept it), against the commits of the topic created again.
func TestHighWatermarkTimedAtItsAnswer(t *testing.T) {
	c, _ := startCluster(t)
	obs := &stallingRecorder{release: make(chan struct{})}
	gone := &goneRecorder{}
	p := startProxy(t, c, func(cfg *Config) { cfg.Observer, cfg.OffsetsGone = obs, gone.tell })
	ctx := testCtx(t)
	topic := uniqueTopic(t, "hwm-time")
	prod := kgoClient(t, p, kgo.DefaultProduceTopic(topic))
	for range 3 {
		if err := prod.ProduceSync(ctx, &kgo.Record{Value: []byte("v")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	prod.Close()

	// The first answer with records holds the observer in its consume checkpoint; the answers
	// after it wait in the queue.
	obs.stalled.Store(true)
	released := false
	release := func() {
		if !released {
			released = true
			close(obs.release)
		}
	}
	defer release()
	cons := kgoClient(t, p, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	for got := 0; got < 3; {
		fs := cons.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consumed %d of 3 records", got)
		}
		got += fs.NumRecords()
	}
	// Two more records, produced past the proxy (its produce checkpoints would wait on the
	// stalled observer), come in an answer that waits in the queue.
	direct, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := direct.ProduceSync(ctx, &kgo.Record{Value: []byte("w")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	direct.Close()
	for got := 0; got < 2; {
		fs := cons.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consumed %d of 2 later records", got)
		}
		got += fs.NumRecords()
	}
	waitFor(t, "a fetch answer to wait for observation", func() bool { return len(p.observeQ) > 0 })
	// Every answer of the consumer is in; none can come after the deletion.
	cons.Close()
	waitFor(t, "the consumer's connections to end", func() bool { _, _, _, open := p.listenerCounts(); return open == 0 })

	adm := kadm.NewClient(kgoClient(t, p, kgo.ClientID("ops")))
	if r, err := adm.DeleteTopics(ctx, topic); err != nil || r.Error() != nil {
		t.Fatalf("delete: %v %v", err, r.Error())
	}
	var deleted int64
	gone.mu.Lock()
	for _, g := range gone.told {
		if g.Topic == topic {
			deleted = g.Time
		}
	}
	gone.mu.Unlock()
	if deleted == 0 {
		t.Fatal("the deletion was not told")
	}
	release()
	waitFor(t, "every queued answer to be observed", func() bool { return p.queued.Load() == 0 })

	obs.mu.Lock()
	defer obs.mu.Unlock()
	n := 0
	for _, o := range obs.offsets {
		if o.Kind != pathway.KafkaHighWatermark || o.Topic != topic {
			continue
		}
		n++
		if o.Time > deleted {
			t.Errorf("high watermark %d of partition %d, answered before the topic was deleted, is timed %d ns after the deletion", o.Value, o.Partition, o.Time-deleted)
		}
	}
	if n == 0 {
		t.Error("no high watermark of the topic was recorded")
	}
	// So are its records: the consumer had them when the answer came.
	n = 0
	for _, pt := range obs.points {
		if !slices.Contains(pt.EdgeTags, "direction:in") {
			continue
		}
		n += int(pt.Checkpoints())
		if pt.Time > deleted {
			t.Errorf("a consume checkpoint of a record answered before the topic was deleted is timed %d ns after the deletion", pt.Time-deleted)
		}
	}
	if n != 5 {
		t.Errorf("%d consume checkpoints, want 5", n)
	}
}
