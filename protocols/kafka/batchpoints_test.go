package kafka

import (
	"bytes"
	"slices"
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
		// Sizes all different: records alike would share a point, and never reach the bound.
		recs[i] = &kgo.Record{Value: bytes.Repeat([]byte("v"), i+1)}
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

// TestProducePointsFold: the produce checkpoints of a batch's records alike (one context, one
// size) are one point counting them, held until the answer as one; records of other sizes or
// contexts keep points of their own, and every record is counted as injected.
func TestProducePointsFold(t *testing.T) {
	traced := pathway.Context{Hash: 0x1234}.AppendBase64(nil)
	for _, tc := range []struct {
		name   string
		batch  func(t *testing.T) []byte
		points []int64 // the held points' counts
	}{
		{"alike", func(t *testing.T) []byte { return buildBatchHeader(t, 100, 64, nil, "", nil) }, []int64{100}},
		{"two sizes", func(t *testing.T) []byte {
			b := append(buildBatchHeader(t, 30, 64, nil, "", nil), buildBatchHeader(t, 20, 65, nil, "", nil)...)
			return append(b, buildBatchHeader(t, 10, 64, nil, "", nil)...)
		}, []int64{30, 20, 10}},
		// The traced producer's records are left as they are, without a checkpoint; the bare ones
		// around them are alike.
		{"bare runs around a traced one", func(t *testing.T) []byte {
			b := append(buildBatchHeader(t, 5, 64, nil, "", nil), buildBatchHeader(t, 5, 64, nil, pathway.HeaderKey, traced)...)
			return append(b, buildBatchHeader(t, 5, 64, nil, "", nil)...)
		}, []int64{10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := offlineSession(t)
			before := s.p.Stats().InjectedRecords
			_, _, held, over, ok := s.injectPartition(s.info.Load(), "orders", 0, tc.batch(t), true)
			if !ok || held == nil || over != 0 {
				t.Fatalf("injected %v, held %v, over %d", ok, held != nil, over)
			}
			var counts []int64
			for _, pt := range *held {
				counts = append(counts, pt.Checkpoints())
			}
			if !slices.Equal(counts, tc.points) {
				t.Errorf("held points counting %v records, want %v", counts, tc.points)
			}
			if got, want := s.p.Stats().InjectedRecords-before, uint64(pathway.CountCheckpoints(*held)); got != want {
				t.Errorf("%d records counted injected, want %d", got, want)
			}
			if got := s.heldPoints.Held(); got != int64(len(*held)) {
				t.Errorf("the connection holds room for %d points, want %d", got, len(*held))
			}
		})
	}
}
