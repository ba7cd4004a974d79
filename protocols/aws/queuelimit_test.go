package aws

import (
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// TestSQSQueueOwnSizeLimit: a queue whose MaximumMessageSize (1 KiB here) is below the proxy's
// limit takes a message that fits only without `_datadog`. Through the proxy the send still
// succeeds, in both wire forms: the refused rewrite is sent again as the client sent it, and
// later such messages to that queue go without `_datadog` at once. Messages that fit with it
// still get it. A batch entry refused so is the client's to see (as a direct send of an entry
// over the limit would be), and teaches the proxy that queue's limit too.
func TestSQSQueueOwnSizeLimit(t *testing.T) {
	tp, _, cl, _, ctx := sqsSetup(t, "own-limit-base", nil)
	small := func(name string) string {
		t.Helper()
		cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(name),
			Attributes: map[string]string{"MaximumMessageSize": "1024"}})
		if err != nil {
			t.Fatalf("CreateQueue %s: %v", name, err)
		}
		return *cq.QueueUrl
	}
	near := strings.Repeat("n", 1000) // fits 1024 alone, not with _datadog
	qurl := small("own-limit")
	for i := range 3 {
		if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: &near}); err != nil {
			t.Fatalf("send %d of a message that fits its queue: %v", i, err)
		}
	}
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: awssdk.String("short")}); err != nil {
		t.Fatal(err)
	}
	if n := len(tp.ev.named("queue_size_limit")); n != 1 {
		t.Errorf("%d queue_size_limit skips (refused and sent again), want 1: the second and third should not have been tried", n)
	}
	if n := len(tp.ev.named("size_limit")); n != 2 {
		t.Errorf("%d size_limit skips, want 2", n)
	}
	got := receiveAll(ctx, t, cl, qurl, 4, []string{"All"})
	carried := 0
	for _, m := range got {
		if _, ok := m.MessageAttributes[ddAttr]; ok {
			carried++
			if awssdk.ToString(m.Body) != "short" {
				t.Errorf("a message of %d bytes carries _datadog into a 1024-byte queue", len(awssdk.ToString(m.Body)))
			}
		}
	}
	if carried != 1 {
		t.Errorf("%d of 4 messages carry _datadog, want 1 (the short one)", carried)
	}
	if n := len(tp.rec.withTags("direction:out", "topic:own-limit")); n != 4 {
		t.Errorf("%d produce checkpoints, want 4", n)
	}
	if st := tp.Stats(); st.Injected != 1 || st.UpstreamErrors != 0 {
		t.Errorf("stats %+v: want 1 injected and no upstream error reaching the client", st)
	}

	// The Query form (Debian's awscli), on a queue of its own.
	aws := newCLI(t, tp.url)
	qq := small("own-limit-query")
	for range 2 {
		var out struct{ MessageId string }
		aws.run(ctx, &out, "sqs", "send-message", "--queue-url", qq, "--message-body", near)
		if out.MessageId == "" {
			t.Fatal("Query send-message answered no MessageId")
		}
	}
	if n := len(tp.ev.named("queue_size_limit")); n != 2 {
		t.Errorf("%d queue_size_limit skips after the Query sends, want 2", n)
	}

	// A batch: the entry over the limit with _datadog fails as SQS says, and the queue's limit
	// is learned from it.
	qb := small("own-limit-batch")
	bm, err := cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &qb, Entries: []types.SendMessageBatchRequestEntry{
		{Id: awssdk.String("near"), MessageBody: &near}, {Id: awssdk.String("short"), MessageBody: awssdk.String("short")},
	}})
	if err != nil || len(bm.Failed) != 1 || awssdk.ToString(bm.Failed[0].Id) != "near" {
		t.Fatalf("batch: %v %+v", err, bm)
	}
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qb, MessageBody: &near}); err != nil {
		t.Fatalf("send after the batch: %v", err)
	}
	if n := len(tp.ev.named("queue_size_limit")); n != 2 {
		t.Errorf("%d queue_size_limit skips after the batch, want still 2: its limit was known", n)
	}
}
