package aws

import (
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestRelayedAttributesCheckpointed: a service without a tracer that receives with
// MessageAttributeNames All and sends the message on with the attributes it got (a relay, a
// router, a hand-made dead-letter copy) sends the `_datadog` the proxy gave the message. That
// context is the proxy's own, not a tracer's checkpoint: the relay's send must get its produce
// checkpoint, its parent the relay's consume, as a tracer in the relay would record it, and the
// next consumer's parent is that produce. The proxy used to take the copied context for a
// tracer's and record nothing for the send (Existing), so the pathway skipped the relay.
func TestRelayedAttributesCheckpointed(t *testing.T) {
	tp, up, cl, in, ctx := sqsSetup(t, "relay-in", nil)
	cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("relay-out")})
	if err != nil {
		t.Fatal(err)
	}
	out := *cq.QueueUrl
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &in, MessageBody: awssdk.String("order 1"),
		MessageAttributes: map[string]types.MessageAttributeValue{"tenant": strAttr("acme")}}); err != nil {
		t.Fatal(err)
	}
	var got []types.Message
	for len(got) == 0 && ctx.Err() == nil {
		rm, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &in, MessageAttributeNames: []string{"All"}, WaitTimeSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		got = rm.Messages
	}
	m := got[0]
	// Once as a single send, once in a batch (the Query form is the same code after decoding).
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &out, MessageBody: m.Body, MessageAttributes: m.MessageAttributes}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &out, Entries: []types.SendMessageBatchRequestEntry{
		{Id: awssdk.String("1"), MessageBody: m.Body, MessageAttributes: m.MessageAttributes}}}); err != nil {
		t.Fatal(err)
	}
	for n := 0; n < 2 && ctx.Err() == nil; {
		rm, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &out, MaxNumberOfMessages: 10, WaitTimeSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		n += len(rm.Messages)
	}
	consIn := tp.rec.withTags("direction:in", "topic:relay-in")
	prodOut := tp.rec.withTags("direction:out", "topic:relay-out")
	if len(consIn) != 1 || len(prodOut) != 2 {
		t.Fatalf("%d consume points on relay-in and %d produce points on relay-out, want 1 and 2 (stats %+v)", len(consIn), len(prodOut), tp.Stats())
	}
	for _, p := range prodOut {
		if p.ParentHash != consIn[0].Hash {
			t.Errorf("relay's produce on relay-out has parent %d, want its consume on relay-in %d", p.ParentHash, consIn[0].Hash)
		}
		if p.PathwayLatency < consIn[0].PathwayLatency {
			t.Errorf("relay's produce pathway latency %d below its consume's %d: the pathway did not go on", p.PathwayLatency, consIn[0].PathwayLatency)
		}
	}
	assertChainedCounts(t, tp, "sqs", "relay-out", 2, 2)
	if s := tp.Stats(); s.Existing != 0 {
		t.Errorf("the relay's sends counted as a tracer's (Existing %d)", s.Existing)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
	_ = pathway.HeaderKey
}
