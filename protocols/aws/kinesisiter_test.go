package aws

import (
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	ktypes "github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// TestKinesisUnknownIterator: a Kinesis consumer polls GetRecords with the NextShardIterator it
// got before the proxy restarted (or from another proxy instance behind the same address).
// GetRecords names no stream and the new proxy has not seen the iterator: it must record no
// consume checkpoint without a topic (a node `direction:in,type:kinesis` no tracer makes, as
// dd-trace-py records nothing then), and say so instead.
func TestKinesisUnknownIterator(t *testing.T) {
	_, up, kcA, ctx := kinesisSetup(t, "restarted", nil)
	stream := awssdk.String("restarted")
	for i := 0; i < 2; i++ {
		if _, err := kcA.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: []byte(`{"n":1}`), PartitionKey: awssdk.String("k")}); err != nil {
			t.Fatalf("PutRecord: %v", err)
		}
	}
	desc, err := kcA.DescribeStream(ctx, &kinesis.DescribeStreamInput{StreamName: stream})
	if err != nil {
		t.Fatal(err)
	}
	it, err := kcA.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: stream, ShardId: desc.StreamDescription.Shards[0].ShardId,
		ShardIteratorType: ktypes.ShardIteratorTypeTrimHorizon})
	if err != nil {
		t.Fatal(err)
	}
	// The proxy restarts: a new instance in front of the same stream; the consumer keeps polling.
	tpB := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	kcB := kinesisClient(tpB.url)
	next := it.ShardIterator
	got := 0
	for polls := 0; polls < 3 && ctx.Err() == nil; polls++ {
		gr, err := kcB.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: next})
		if err != nil {
			t.Fatalf("GetRecords: %v", err)
		}
		got += len(gr.Records)
		next = gr.NextShardIterator
		// a record arrives between polls
		if _, err := kcA.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: []byte(`{"n":2}`), PartitionKey: awssdk.String("k")}); err != nil {
			t.Fatalf("PutRecord: %v", err)
		}
	}
	if got == 0 {
		t.Fatal("no records read")
	}
	for _, p := range tpB.rec.all() {
		if !strings.Contains(strings.Join(p.EdgeTags, ","), "topic:") {
			t.Errorf("consume checkpoint without a topic: tags %v (hash %d)", p.EdgeTags, p.Hash)
		}
	}
	skipped := 0
	for _, e := range tpB.ev.named("unknown_stream") {
		skipped += e.Messages
	}
	if skipped != got {
		t.Errorf("%d records reported as unknown_stream, want the %d read", skipped, got)
	}
}
