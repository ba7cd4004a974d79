package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// The SQS part of the demo: queue names, and the static keys both the example services and the
// proxy sign with (goaws checks no signature; the proxy verifies the services' and re-signs).
const (
	demoSQSQueue   = "dsmproxy-demo-payments"
	demoSQSMissing = "dsmproxy-demo-refunds" // never created: sends to it fail
	demoSQSKey     = "demo"
	demoSQSSecret  = "demo"
	demoSQSRegion  = "us-east-1"
)

var demoSQSCreds = credentials.NewStaticCredentialsProvider(demoSQSKey, demoSQSSecret, "")

// newDemoSQSClient is an SQS client that reaches the queues only through the proxy at endpoint.
// Its app id (User-Agent app/<name>) is the service name the proxy gives it.
func newDemoSQSClient(endpoint, app string) *sqs.Client {
	return sqs.NewFromConfig(awssdk.Config{Region: demoSQSRegion, Credentials: demoSQSCreds, AppID: app},
		func(o *sqs.Options) { o.BaseEndpoint = awssdk.String(endpoint) })
}

// demoSQSServices creates the payments queue (before any service runs: goaws's queue map is
// read without a lock) and returns checkout, which sends about rate messages/s to it (every
// fifth send a SendMessageBatch) and every 3 s one to a queue that does not exist, and payments,
// which long-polls the queue and deletes what it receives.
func demoSQSServices(ctx context.Context, endpoint string, rate int) ([]func(context.Context) error, error) {
	setup := newDemoSQSClient(endpoint, "payments")
	cq, err := setup.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(demoSQSQueue)})
	if err != nil {
		return nil, fmt.Errorf("creating SQS queue %s through the proxy: %w", demoSQSQueue, err)
	}
	queueURL := awssdk.ToString(cq.QueueUrl)
	missingURL := queueURL[:strings.LastIndexByte(queueURL, '/')+1] + demoSQSMissing

	checkout := func(ctx context.Context) error {
		cl := newDemoSQSClient(endpoint, "checkout")
		// 7 messages every 5 ticks (4 single sends and a batch of 3): about rate messages/s
		tick := time.NewTicker(7 * time.Second / time.Duration(5*max(rate, 1)))
		defer tick.Stop()
		lost := time.NewTicker(3 * time.Second)
		defer lost.Stop()
		attrs := map[string]sqstypes.MessageAttributeValue{
			// String attributes only: goaws gets MD5OfMessageAttributes wrong for Number ones.
			"currency": {DataType: awssdk.String("String"), StringValue: awssdk.String("EUR")},
		}
		for n := 0; ; n++ {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-lost.C:
				// A refund for a queue nobody created: the app logs and moves on; the proxy
				// tracks the error.
				_, _ = cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &missingURL, MessageBody: awssdk.String(`{"refund":1}`)})
				continue
			case <-tick.C:
			}
			var err error
			if n%5 == 4 {
				entries := make([]sqstypes.SendMessageBatchRequestEntry, 3)
				for i := range entries {
					entries[i] = sqstypes.SendMessageBatchRequestEntry{Id: awssdk.String(strconv.Itoa(i)),
						MessageBody: awssdk.String(fmt.Sprintf(`{"payment":%d,"part":%d}`, n, i)), MessageAttributes: attrs}
				}
				var out *sqs.SendMessageBatchOutput
				if out, err = cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &queueURL, Entries: entries}); err == nil && len(out.Failed) > 0 {
					err = fmt.Errorf("%d of %d batch entries failed: %s", len(out.Failed), len(entries), awssdk.ToString(out.Failed[0].Message))
				}
			} else {
				_, err = cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &queueURL, MessageAttributes: attrs,
					MessageBody: awssdk.String(fmt.Sprintf(`{"payment":%d}`, n))})
			}
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("checkout sending to %s: %w", demoSQSQueue, err)
			}
		}
	}
	payments := func(ctx context.Context) error {
		cl := newDemoSQSClient(endpoint, "payments")
		for {
			out, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &queueURL,
				MaxNumberOfMessages: 10, WaitTimeSeconds: 1, MessageAttributeNames: []string{"All"}})
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				return fmt.Errorf("payments receiving from %s: %w", demoSQSQueue, err)
			}
			if len(out.Messages) == 0 {
				continue
			}
			del := make([]sqstypes.DeleteMessageBatchRequestEntry, len(out.Messages))
			for i, m := range out.Messages {
				del[i] = sqstypes.DeleteMessageBatchRequestEntry{Id: awssdk.String(strconv.Itoa(i)), ReceiptHandle: m.ReceiptHandle}
			}
			if _, err := cl.DeleteMessageBatch(ctx, &sqs.DeleteMessageBatchInput{QueueUrl: &queueURL, Entries: del}); err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
				return fmt.Errorf("payments deleting from %s: %w", demoSQSQueue, err)
			}
		}
	}
	return []func(context.Context) error{checkout, payments}, nil
}
