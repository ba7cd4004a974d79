package aws

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// TestSQSFifoThroughProxy: a FIFO queue with content-based deduplication behaves through the
// proxy as it does directly. The _datadog attribute the proxy adds is not part of the body the
// deduplication id is hashed from, so a resent body is still dropped as a duplicate, and group and
// deduplication ids pass in JSON, in a batch and in the Query form (awscli); each group's messages
// arrive in the order sent, each with one context that chains to its send.
func TestSQSFifoThroughProxy(t *testing.T) {
	const queue = "orders.fifo"
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := sqsClient(tp.url, testKey, testSecret)
	cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(queue),
		Attributes: map[string]string{"FifoQueue": "true", "ContentBasedDeduplication": "true"}})
	if err != nil {
		t.Fatalf("CreateQueue %s: %v", queue, err)
	}
	qurl := cq.QueueUrl
	var want []string
	for i := range 5 {
		body := fmt.Sprintf("g1-%d", i)
		want = append(want, body)
		if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: qurl, MessageBody: &body, MessageGroupId: awssdk.String("g1")}); err != nil {
			t.Fatalf("SendMessage %s: %v", body, err)
		}
	}
	// The same body again within the deduplication window: accepted, and dropped by the queue.
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: qurl, MessageBody: awssdk.String("g1-2"), MessageGroupId: awssdk.String("g1")}); err != nil {
		t.Fatalf("resending g1-2: %v", err)
	}
	var entries []types.SendMessageBatchRequestEntry
	for i := range 3 {
		body := fmt.Sprintf("g2-%d", i)
		want = append(want, body)
		entries = append(entries, types.SendMessageBatchRequestEntry{Id: awssdk.String(fmt.Sprint(i)), MessageBody: awssdk.String(body),
			MessageGroupId: awssdk.String("g2"), MessageDeduplicationId: awssdk.String(fmt.Sprintf("d%d", i))})
	}
	if out, err := cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: qurl, Entries: entries}); err != nil || len(out.Failed) != 0 {
		t.Fatalf("SendMessageBatch: %v %+v", err, out)
	}
	// The Query protocol (Debian's awscli): its group and deduplication parameters survive the
	// rewrite of the form.
	aws := newCLI(t, tp.url)
	for i := range 2 {
		body := fmt.Sprintf("g3-%d", i)
		want = append(want, body)
		aws.run(ctx, nil, "sqs", "send-message", "--queue-url", *qurl, "--message-body", body, "--message-group-id", "g3",
			"--message-deduplication-id", fmt.Sprintf("q%d", i))
	}
	aws.run(ctx, nil, "sqs", "send-message", "--queue-url", *qurl, "--message-body", "g3-0 again", "--message-group-id", "g3",
		"--message-deduplication-id", "q0") // a duplicate id: dropped

	var got []string
	for len(got) < len(want) {
		if ctx.Err() != nil {
			t.Fatalf("received %v of %v", got, want)
		}
		rm, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: qurl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1,
			MessageAttributeNames: []string{ddAttr}})
		if err != nil {
			t.Fatalf("ReceiveMessage: %v", err)
		}
		for _, m := range rm.Messages {
			got = append(got, awssdk.ToString(m.Body))
			if dd, ok := m.MessageAttributes[ddAttr]; !ok || contextFromCarrier([]byte(awssdk.ToString(dd.StringValue))).Hash == 0 {
				t.Errorf("%s arrived without a pathway context: %v", awssdk.ToString(m.Body), m.MessageAttributes)
			}
			if _, err := cl.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: qurl, ReceiptHandle: m.ReceiptHandle}); err != nil {
				t.Fatalf("DeleteMessage: %v", err)
			}
		}
	}
	// Nothing more: the resent body was deduplicated.
	if rm, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: qurl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1}); err != nil || len(rm.Messages) != 0 {
		t.Errorf("after all %d messages: %d more (%v)", len(want), len(rm.Messages), err)
	}
	for _, g := range []string{"g1-", "g2-", "g3-"} {
		var order, sent []string
		for _, b := range got {
			if len(b) > 3 && b[:3] == g {
				order = append(order, b)
			}
		}
		for _, b := range want {
			if b[:3] == g {
				sent = append(sent, b)
			}
		}
		if !slices.Equal(order, sent) {
			t.Errorf("group %s arrived as %v, sent as %v", g, order, sent)
		}
	}
	// Every send was checkpointed, the two duplicates the queue dropped included; each delivered
	// message's consume point chains to one of them.
	assertChainedCounts(t, tp, "sqs", queue, len(want)+2, len(want))
}
