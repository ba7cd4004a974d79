package aws

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// tracerContext is the pathway context a traced producer of service "traced-app" puts on a
// message to topic.
func tracerContext(typ, topic string) pathway.Context {
	_, ctx := pathway.NewCheckpointer("test", 0).Checkpoint(pathway.Context{}, "traced-app",
		pathway.Edge{Direction: pathway.Out, Type: typ, Topic: topic}, 5, time.Now())
	return ctx
}

// TestSQSRespectsTracerContext: a message whose `_datadog` already holds a pathway context comes
// from a tracer, which checkpointed it. By default (design rule 6) it reaches SQS as the client
// sent it and the proxy records no produce checkpoint; with respect_existing_context off the proxy
// checkpoints it with the tracer's context as the parent and replaces that context. A `_datadog`
// with trace ids only gets the pathway context merged in either way. The consumer's checkpoint
// has the producing checkpoint as its parent in every case.
func TestSQSRespectsTracerContext(t *testing.T) {
	tctx := tracerContext(pathway.TypeSQS, "traced")
	withCtx := `{"x-datadog-trace-id":"1","x-datadog-parent-id":"2","dd-pathway-ctx-base64":"` + tctx.String() + `"}`
	traceOnly := `{"x-datadog-trace-id":"1","x-datadog-parent-id":"2"}`
	off := false
	tests := []struct {
		name      string
		respect   *bool
		dd        string
		unchanged bool // the `_datadog` SQS stores is the client's
		produced  bool // the proxy records a produce checkpoint (parent: the tracer's, if any)
	}{
		{name: "tracer context left alone", dd: withCtx, unchanged: true},
		{name: "tracer context replaced when respect is off", respect: &off, dd: withCtx, produced: true},
		{name: "trace ids only get the context merged", dd: traceOnly, produced: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, up, cl, qurl, ctx := sqsSetup(t, "traced", func(c *Config) { c.RespectExistingContext = tt.respect })
			if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: awssdk.String("hello"),
				MessageAttributes: map[string]types.MessageAttributeValue{ddAttr: strAttr(tt.dd)}}); err != nil {
				t.Fatalf("SendMessage: %v", err)
			}
			up.mu.Lock()
			last := up.bodies[len(up.bodies)-1]
			up.mu.Unlock()
			var sent struct {
				MessageAttributes map[string]struct{ StringValue string }
			}
			if err := json.Unmarshal([]byte(last), &sent); err != nil {
				t.Fatalf("upstream body %q: %v", last, err)
			}
			stored := sent.MessageAttributes[ddAttr].StringValue
			if (stored == tt.dd) != tt.unchanged {
				t.Errorf("_datadog on its way to SQS: %s (the client sent %s; want it unchanged: %v)", stored, tt.dd, tt.unchanged)
			}
			if !tt.unchanged && !bytes.Contains([]byte(stored), []byte(`"x-datadog-trace-id":"1"`)) {
				t.Errorf("the client's trace ids were lost: %s", stored)
			}
			prod := tp.rec.withTags("direction:out", "topic:traced")
			if (len(prod) == 1) != tt.produced || len(prod) > 1 {
				t.Fatalf("%d produce checkpoints, want one: %v", len(prod), tt.produced)
			}
			wantParent := tctx.Hash // the consumer's parent: the last producing checkpoint
			if tt.produced {
				if tt.dd == withCtx && prod[0].ParentHash != tctx.Hash {
					t.Errorf("produce checkpoint's parent %d, want the tracer's %d", prod[0].ParentHash, tctx.Hash)
				}
				wantParent = prod[0].Hash
			}
			if st := tp.Stats(); (st.Existing == 1) != tt.unchanged {
				t.Errorf("Stats.Existing %d", st.Existing)
			}
			out, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &qurl, WaitTimeSeconds: 5})
			if err != nil || len(out.Messages) != 1 {
				t.Fatalf("ReceiveMessage: %v (%d messages)", err, len(out.Messages))
			}
			cons := tp.rec.withTags("direction:in", "topic:traced")
			if len(cons) != 1 || cons[0].ParentHash != wantParent {
				t.Errorf("consume checkpoints %+v, want one with parent %d", cons, wantParent)
			}
		})
	}
}

// TestKinesisRespectsTracerContext: a record whose JSON data carries a tracer's `_datadog` is put
// unchanged, with no produce checkpoint, even when the proxy injects into record data.
func TestKinesisRespectsTracerContext(t *testing.T) {
	tp, _, kc, ctx := kinesisSetup(t, "traced-stream", func(c *Config) { c.KinesisInjectData = true })
	stream := awssdk.String("traced-stream")
	tctx := tracerContext(pathway.TypeKinesis, "traced-stream")
	traced := []byte(`{"a":1,"_datadog":{"x-datadog-trace-id":"1","dd-pathway-ctx-base64":"` + tctx.String() + `"}}`)
	if _, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: traced, PartitionKey: awssdk.String("t")}); err != nil {
		t.Fatalf("PutRecord: %v", err)
	}
	if prod := tp.rec.withTags("direction:out", "topic:traced-stream"); len(prod) != 0 {
		t.Errorf("%d produce checkpoints for a traced producer's record", len(prod))
	}
	recs := readShard(t, ctx, kc, stream, 1)
	if !bytes.Equal(recs[0].Data, traced) {
		t.Errorf("record data %s, want the producer's %s", recs[0].Data, traced)
	}
	if st := tp.Stats(); st.Existing != 1 || st.Injected != 0 {
		t.Errorf("Stats: existing %d, injected %d; want 1, 0", st.Existing, st.Injected)
	}
	cons := tp.rec.withTags("direction:in", "topic:traced-stream")
	if len(cons) != 1 || cons[0].ParentHash != tctx.Hash {
		t.Errorf("consume checkpoints %+v, want one with the tracer's parent %d", cons, tctx.Hash)
	}
}
