package aws

import (
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// nowMilli is the current time truncated to the millisecond: a pathway context carries its
// times in whole milliseconds, so a produce checkpoint taken after this instant can start its
// edge no earlier than it.
func nowMilli() time.Time { return time.UnixMilli(time.Now().UnixMilli()) }

// TestKinesisConsumeLatencies: records read with GetRecords through the proxy whose data carries
// a `_datadog` pathway context get consume checkpoints (direction:in, type:kinesis) chained to
// that context, with the latencies the context's own times give (not the arrival-time stand-in
// that only context-less records get), bounded by the wall time the test measured around its
// put..get (and, for a traced producer's context, that context's known age).
//
//   - proxied: a JSON record put through the injecting proxy. The consume point's ParentHash is
//     the produce point's Hash, and 0 <= EdgeLatency <= PathwayLatency <= the measured window.
//   - traced: a record whose producer is a traced client, with a `_datadog` the test builds with
//     a pathway start pathwayAge and an edge start edgeAge before the put. The proxy leaves it
//     alone (no produce point, design rule 6); the consume point's ParentHash is the context's
//     hash, pathwayAge <= PathwayLatency <= window + pathwayAge and edgeAge <= EdgeLatency <=
//     window + edgeAge.
func TestKinesisConsumeLatencies(t *testing.T) {
	const (
		pathwayAge = 5 * time.Second
		edgeAge    = 2 * time.Second
	)
	tp, up, kc, ctx := kinesisSetup(t, "latency", func(c *Config) { c.KinesisInjectData = true })
	stream := awssdk.String("latency")

	before := nowMilli()
	if _, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: []byte(`{"order":1,"item":"x"}`), PartitionKey: awssdk.String("p")}); err != nil {
		t.Fatalf("PutRecord through the proxy: %v", err)
	}
	// The traced producer's context: its hash from a checkpoint of its own, its times set back
	// from an instant no later than the put by exactly the two ages.
	tracedAt := nowMilli()
	tctx := tracerContext(pathway.TypeKinesis, "latency")
	tctx.PathwayStart, tctx.EdgeStart = tracedAt.Add(-pathwayAge), tracedAt.Add(-edgeAge)
	traced := []byte(`{"order":2,"_datadog":{"x-datadog-trace-id":"77","dd-pathway-ctx-base64":"` + tctx.String() + `"}}`)
	if _, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: traced, PartitionKey: awssdk.String("p")}); err != nil {
		t.Fatalf("PutRecord of the traced record through the proxy: %v", err)
	}
	readShard(t, ctx, kc, stream, 2)
	after := time.Now()

	prod := tp.rec.withTags("direction:out", "type:kinesis", "topic:latency")
	if len(prod) != 1 {
		t.Fatalf("%d produce points, want 1 (the traced producer's record is its tracer's to checkpoint)", len(prod))
	}
	cons := tp.rec.withTags("direction:in", "type:kinesis", "topic:latency")
	if len(cons) != 2 {
		t.Fatalf("%d consume points, want 2", len(cons))
	}
	var proxied, fromTracer *pathway.Point
	for i := range cons {
		switch cons[i].ParentHash {
		case prod[0].Hash:
			proxied = &cons[i]
		case tctx.Hash:
			fromTracer = &cons[i]
		}
	}
	if proxied == nil || fromTracer == nil {
		t.Fatalf("consume parents %d and %d, want the produce point's %d and the traced context's %d",
			cons[0].ParentHash, cons[1].ParentHash, prod[0].Hash, tctx.Hash)
	}

	if proxied.PayloadSize != prod[0].PayloadSize {
		t.Errorf("proxied record: consume size %d, produce size %d; want them equal (the consumer gets the data without the proxy's _datadog)",
			proxied.PayloadSize, prod[0].PayloadSize)
	}

	window := after.Sub(before)
	pl, el := time.Duration(proxied.PathwayLatency), time.Duration(proxied.EdgeLatency)
	if el < 0 || pl < el || pl > window {
		t.Errorf("proxied record: edge latency %v, pathway latency %v; want 0 <= edge <= pathway <= %v (put..get)", el, pl, window)
	}

	tw := after.Sub(tracedAt)
	pl, el = time.Duration(fromTracer.PathwayLatency), time.Duration(fromTracer.EdgeLatency)
	if pl < pathwayAge || pl > tw+pathwayAge {
		t.Errorf("traced record: pathway latency %v, want between %v and %v", pl, pathwayAge, tw+pathwayAge)
	}
	if el < edgeAge || el > tw+edgeAge {
		t.Errorf("traced record: edge latency %v, want between %v and %v", el, edgeAge, tw+edgeAge)
	}
	if pl < el {
		t.Errorf("traced record: pathway latency %v below edge latency %v", pl, el)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}
