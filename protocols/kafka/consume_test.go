package kafka

import (
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// batchRecorder is a recorder that also takes points a batch at once, as the aggregator does.
type batchRecorder struct{ recorder }

func (r *batchRecorder) AddAll(ps []pathway.Point) int {
	r.mu.Lock()
	r.points = append(r.points, ps...)
	r.mu.Unlock()
	return len(ps)
}

// TestConsumeCheckpointPerRecord: a fetched partition gets one checkpoint per record, equal to
// the one computed for that record alone (its own parent and payload size), whether neighbouring
// records share its context or not, through a per-point and a per-batch observer. A run of
// records alike (one context, one size) is handed over as one point counting them.
func TestConsumeCheckpointPerRecord(t *testing.T) {
	now := time.Unix(1700000100, 0)
	ctxA := pathway.Context{Hash: 0x1111, PathwayStart: now.Add(-time.Second), EdgeStart: now.Add(-time.Millisecond)}
	ctxB := pathway.Context{Hash: 0x2222, PathwayStart: now.Add(-2 * time.Second), EdgeStart: now.Add(-3 * time.Millisecond)}
	type run struct {
		n, size int
		key     string
		value   []byte
	}
	runs := []run{
		{3, 10, pathway.HeaderKey, ctxA.AppendBase64(nil)},
		{2, 20, "other", []byte("x")}, // no context
		{2, 30, pathway.HeaderKey, ctxB.AppendBase64(nil)},
		{2, 40, pathway.HeaderKey, ctxB.AppendBase64(nil)}, // same context, new batch and size
		{1, 50, pathway.HeaderKey, []byte("not a context")},
		{2, 60, pathway.HeaderKey, ctxA.AppendBase64(nil)},
	}
	var records []byte
	var want []pathway.Point
	cp := pathway.NewCheckpointer("test", 0)
	edge := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: "orders", Group: "g"}
	for _, r := range runs {
		records = append(records, buildBatchHeader(t, r.n, r.size, nil, r.key, r.value)...)
		var parent pathway.Context
		if r.key == pathway.HeaderKey {
			parent, _ = pathway.DecodeBase64(r.value)
		}
		pt, _ := cp.Checkpoint(parent, "svc", edge, 0, now)
		for range r.n {
			pt.PayloadSize = int64(r.size + 2 + len(r.key) + len(r.value)) // value, key "k?", header
			want = append(want, pt)
		}
	}
	for _, tc := range []struct {
		name string
		obs  interface {
			Observer
			snapshot() ([]pathway.Point, []pathway.Offset)
			raw() []pathway.Point
		}
	}{{"per point", &recorder{}}, {"per batch", &batchRecorder{}}} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(Config{Listen: "127.0.0.1:0", Bootstrap: []string{"127.0.0.1:1"}, Env: "test", Observer: tc.obs, Clock: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			part := &kmsg.FetchResponseTopicPartition{RecordBatches: records}
			p.consumeRecords(&clientInfo{service: "svc"}, edge, part, 0, false, now)
			got, _ := tc.obs.snapshot()
			if !slices.EqualFunc(got, want, func(a, b pathway.Point) bool {
				return a.Hash == b.Hash && a.ParentHash == b.ParentHash && a.PathwayLatency == b.PathwayLatency &&
					a.EdgeLatency == b.EdgeLatency && a.PayloadSize == b.PayloadSize && a.Service == b.Service && slices.Equal(a.EdgeTags, b.EdgeTags)
			}) {
				t.Fatalf("checkpoints:\n got %+v\nwant %+v", got, want)
			}
			// Records of one context and one size in a row are one point of that count.
			if raw := tc.obs.raw(); len(raw) != len(runs) {
				t.Fatalf("%d points for %d runs of records alike: %+v", len(raw), len(runs), raw)
			}
		})
	}
}
