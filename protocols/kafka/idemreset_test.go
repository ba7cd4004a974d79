package kafka

import (
	"fmt"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestIdempotentRetryAfterReset: the broker connection is reset while it holds an idempotent kgo
// producer's batch, which the broker then stores without its answer reaching anyone. kgo sends
// the batch again on a new connection and the broker answers it as the copy it stored. The topic
// holds every record once, each with one pathway header; the proxy counts one produce checkpoint
// per record: the cut batch's checkpoints count as dropped (whether it was stored is unknown
// when the connection ends), its resend's count. How kgo splits the 5 records into batches, and
// how often it sends a batch again, varies with timing: a batch it sends again after the broker
// stored it is answered as a duplicate and counted once (ResentBatches).
func TestIdempotentRetryAfterReset(t *testing.T) {
	c, g := startCluster(t, kfake.NumBrokers(1), kfake.DefaultNumPartitions(1))
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "idemreset")
	cl := kgoClient(t, p, kgo.ClientID("idem-writer"), kgo.DefaultProduceTopic(topic), kgo.ProducerLinger(0))
	produce := func(from, n int) error {
		recs := make([]*kgo.Record, n)
		for i := range recs {
			recs[i] = &kgo.Record{Key: fmt.Appendf(nil, "k%d", from+i), Value: []byte("v")}
		}
		return cl.ProduceSync(ctx, recs...).FirstErr()
	}
	if err := produce(0, 5); err != nil {
		t.Fatal(err)
	}

	// Hold the next produce of the topic until its connection is reset, then let the broker
	// store it; count every produce of the topic the broker gets.
	var produces, held atomic.Int32
	arrived, release := make(chan struct{}), make(chan struct{})
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		ours := slices.ContainsFunc(req.(*kmsg.ProduceRequest).Topics, func(rt kmsg.ProduceRequestTopic) bool { return rt.Topic == topic || rt.TopicID != [16]byte{} })
		if !ours {
			return nil, nil, false
		}
		if produces.Add(1) == 1 {
			held.Store(int32(producedRecords(t, req.(*kmsg.ProduceRequest))))
			close(arrived)
			c.SleepControl(func() { <-release })
		}
		return nil, nil, false
	})
	c.KeepControl()
	done := make(chan error, 1)
	go func() { done <- produce(5, 5) }()
	select {
	case <-arrived:
	case err := <-done:
		t.Fatalf("the produce ended before the broker held it: %v", err)
	}
	g.resetAll()
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("the produce cut by the reset failed, want it retried: %v", err)
	}
	if err := produce(10, 5); err != nil {
		t.Fatal(err)
	}
	if n := produces.Load(); n < 3 {
		t.Fatalf("the broker got %d produces after the first 5 records, want the cut one, its resend and the last", n)
	}

	got := readTopic(t, ctx, p, topic, 15)
	keys := map[string]int{}
	for _, r := range got {
		keys[string(r.Key)]++
		if _, n := pathwayHeaders(t, r); n != 1 {
			t.Errorf("record %s at %d: %d pathway headers", r.Key, r.Offset, n)
		}
	}
	if len(got) != 15 || len(keys) != 15 || got[len(got)-1].Offset != 14 {
		t.Errorf("read %d records, %d distinct keys, last offset %d; want 15, 15, 14", len(got), len(keys), got[len(got)-1].Offset)
	}
	if n := len(pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")); n != 15 {
		t.Errorf("%d produce checkpoints for 15 records", n)
	}
	// The held batch was cut; a batch pipelined behind it on the same connection may have been too.
	st := p.Stats()
	if h := uint64(held.Load()); st.PointsDropped < h || st.PointsDropped > 5 {
		t.Errorf("PointsDropped %d; want the held batch's %d records, or up to the 5 of every batch cut with it", st.PointsDropped, h)
	}
	if extra := uint64(produces.Load() - 3); st.ResentBatches > extra {
		t.Errorf("ResentBatches %d, but the broker got only %d produces beyond the cut one, its resend and the last", st.ResentBatches, extra)
	}
	t.Logf("broker got %d produces of the topic after the first batch, the held one with %d records; PointsDropped %d, ResentBatches %d",
		produces.Load(), held.Load(), st.PointsDropped, st.ResentBatches)
	g.check(t)
}

// producedRecords counts the records of every batch in req.
func producedRecords(t *testing.T, req *kmsg.ProduceRequest) int {
	n := 0
	for _, rt := range req.Topics {
		for _, rp := range rt.Partitions {
			for b := rp.Records; len(b) > 0; {
				var rb kmsg.RecordBatch
				if err := rb.ReadFrom(b); err != nil {
					t.Errorf("produce request's batch: %v", err)
					return n
				}
				n += int(rb.NumRecords)
				b = b[12+int(rb.Length):]
			}
		}
	}
	return n
}
