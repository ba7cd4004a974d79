package kafka

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/aggregator"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestBatchPointsBounded: a batch of more records than maxBatchPoints still gets the header on
// every record, but hands over only maxBatchPoints produce checkpoints; the rest are counted as
// dropped, in the proxy's stats and in the aggregator's, which the flush log reports.
func TestBatchPointsBounded(t *testing.T) {
	old := maxBatchPoints
	maxBatchPoints = 100
	t.Cleanup(func() { maxBatchPoints = old })
	const n = 250

	c, g := startCluster(t)
	agg := aggregator.New(aggregator.Config{Env: "test"})
	agg.Start()
	t.Cleanup(agg.Close)
	p := startProxy(t, c, func(cfg *Config) { cfg.Observer = agg })
	ctx := testCtx(t)
	topic := uniqueTopic(t, "points")

	// Manual flushing: the records wait in the client until Flush, so they go in one batch. With
	// a linger of 0 a loaded machine let kgo send the first few in a request of their own.
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.Addr().String()), kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ManualFlushing(), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	produceFlushed := func(recs ...*kgo.Record) {
		t.Helper()
		errs := make(chan error, len(recs))
		for _, r := range recs {
			cl.Produce(ctx, r, func(_ *kgo.Record, err error) { errs <- err })
		}
		if err := cl.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		for range recs {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
	produceFlushed(&kgo.Record{Value: []byte("create")})
	before := p.Stats()
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Value: []byte("v")}
	}
	produceFlushed(recs...)
	st := p.Stats()
	if got := st.InjectedRecords - before.InjectedRecords; got != n {
		t.Errorf("%d records got the header, want %d", got, n)
	}
	if got := st.PointsDropped - before.PointsDropped; got != n-100 {
		t.Errorf("proxy counted %d checkpoints dropped, want %d", got, n-100)
	}
	waitFor(t, "the aggregator to count the batch", func() bool {
		a := agg.Stats()
		return a.Aggregated == 1+100 && a.PointsDropped == n-100
	})

	g.check(t) // before reading the broker directly below
	// On the broker, every record carries exactly one context.
	direct, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	got := 0
	for got < n+1 && ctx.Err() == nil {
		direct.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			got++
			k := 0
			for _, h := range r.Headers {
				if h.Key == pathway.HeaderKey {
					k++
				}
			}
			if k != 1 {
				t.Errorf("record at offset %d has %d %s headers", r.Offset, k, pathway.HeaderKey)
			}
		})
	}
	if got != n+1 {
		t.Fatalf("read %d records back, want %d", got, n+1)
	}
}
