package aws

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// sqsQueues are the queues of one wire form's run: present exists, small exists with a
// MaximumMessageSize of 1 KiB, missing does not exist.
type sqsQueues struct {
	present, small, missing string // URLs through the proxy
}

// sqsErrCase is one failing SQS call, made once by aws-sdk-go-v2 (AWS JSON 1.0) and once by
// Debian's aws CLI 2.9 (AWS Query).
type sqsErrCase struct {
	op    string
	sdk   func(context.Context, *sqs.Client, sqsQueues) error
	cli   func(sqsQueues) []string
	name  string // the code both clients show, and the error's name in /errors
	queue func(sqsQueues) string
	dir   pathway.Direction // of the error's edge
}

var (
	presentQ = func(q sqsQueues) string { return q.present }
	smallQ   = func(q sqsQueues) string { return q.small }
	missingQ = func(q sqsQueues) string { return q.missing }
)

// cliErrorCode matches the code in the aws CLI's error line.
var cliErrorCode = regexp.MustCompile(`An error occurred \(([^)]+)\) when calling the (\w+) operation`)

// fail runs a command that must fail and returns the error code and operation it printed.
func (c *cli) fail(ctx context.Context, args ...string) (code, op string) {
	c.t.Helper()
	args = append(args, "--endpoint-url", c.endpoint, "--output", "json")
	cmd := exec.CommandContext(ctx, debianAWS, args...)
	cmd.Env = c.env
	b, err := cmd.CombinedOutput()
	if err == nil {
		c.t.Fatalf("aws %s succeeded, want an error:\n%s", strings.Join(args, " "), b)
	}
	m := cliErrorCode.FindSubmatch(b)
	if m == nil {
		c.t.Fatalf("aws %s: %v, no error code in its output:\n%s", strings.Join(args, " "), err, b)
	}
	return string(m[1]), string(m[2])
}

// TestSQSErrorsSameInBothWires: each failure is made by a JSON client and by a Query client
// against local-aws-sqs through the proxy. Both clients must show the same code, and the proxy
// must report it as one broker error under that name, on an edge naming the queue (from the
// request's QueueUrl, or QueueName), whichever wire form carried it.
func TestSQSErrorsSameInBothWires(t *testing.T) {
	tp, _, cl, qurl, ctx := sqsSetup(t, "errs-setup", nil)
	base := strings.TrimSuffix(qurl, "errs-setup")
	tooLong := strings.Repeat("x", 2000)
	cases := []sqsErrCase{
		{op: "SendMessage", name: "AWS.SimpleQueueService.NonExistentQueue", queue: missingQ, dir: pathway.Out,
			sdk: func(ctx context.Context, cl *sqs.Client, q sqsQueues) error {
				_, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &q.missing, MessageBody: awssdk.String("nowhere")})
				return err
			},
			cli: func(q sqsQueues) []string {
				return []string{"sqs", "send-message", "--queue-url", q.missing, "--message-body", "nowhere"}
			}},
		{op: "SendMessage", name: "InvalidParameterValue", queue: smallQ, dir: pathway.Out,
			sdk: func(ctx context.Context, cl *sqs.Client, q sqsQueues) error {
				_, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &q.small, MessageBody: &tooLong})
				return err
			},
			cli: func(q sqsQueues) []string {
				return []string{"sqs", "send-message", "--queue-url", q.small, "--message-body", tooLong}
			}},
		// A consumer's calls after a receive, on the queue's consume edge.
		{op: "DeleteMessage", name: "ReceiptHandleIsInvalid", queue: presentQ, dir: pathway.In,
			sdk: func(ctx context.Context, cl *sqs.Client, q sqsQueues) error {
				_, err := cl.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: &q.present, ReceiptHandle: awssdk.String("bogus")})
				return err
			},
			cli: func(q sqsQueues) []string {
				return []string{"sqs", "delete-message", "--queue-url", q.present, "--receipt-handle", "bogus"}
			}},
		{op: "ChangeMessageVisibility", name: "ReceiptHandleIsInvalid", queue: presentQ, dir: pathway.In,
			sdk: func(ctx context.Context, cl *sqs.Client, q sqsQueues) error {
				_, err := cl.ChangeMessageVisibility(ctx, &sqs.ChangeMessageVisibilityInput{QueueUrl: &q.present,
					ReceiptHandle: awssdk.String("bogus"), VisibilityTimeout: 5})
				return err
			},
			cli: func(q sqsQueues) []string {
				return []string{"sqs", "change-message-visibility", "--queue-url", q.present, "--receipt-handle", "bogus", "--visibility-timeout", "5"}
			}},
		{op: "DeleteMessageBatch", name: "AWS.SimpleQueueService.NonExistentQueue", queue: missingQ, dir: pathway.In,
			sdk: func(ctx context.Context, cl *sqs.Client, q sqsQueues) error {
				_, err := cl.DeleteMessageBatch(ctx, &sqs.DeleteMessageBatchInput{QueueUrl: &q.missing,
					Entries: []types.DeleteMessageBatchRequestEntry{{Id: awssdk.String("x"), ReceiptHandle: awssdk.String("bad")}}})
				return err
			},
			cli: func(q sqsQueues) []string {
				return []string{"sqs", "delete-message-batch", "--queue-url", q.missing, "--entries", `[{"Id":"x","ReceiptHandle":"bad"}]`}
			}},
		{op: "ChangeMessageVisibilityBatch", name: "AWS.SimpleQueueService.NonExistentQueue", queue: missingQ, dir: pathway.In,
			sdk: func(ctx context.Context, cl *sqs.Client, q sqsQueues) error {
				_, err := cl.ChangeMessageVisibilityBatch(ctx, &sqs.ChangeMessageVisibilityBatchInput{QueueUrl: &q.missing,
					Entries: []types.ChangeMessageVisibilityBatchRequestEntry{{Id: awssdk.String("x"), ReceiptHandle: awssdk.String("bad"), VisibilityTimeout: 5}}})
				return err
			},
			cli: func(q sqsQueues) []string {
				return []string{"sqs", "change-message-visibility-batch", "--queue-url", q.missing, "--entries", `[{"Id":"x","ReceiptHandle":"bad","VisibilityTimeout":5}]`}
			}},
		// Managing the queue: its edge has no direction.
		{op: "GetQueueAttributes", name: "AWS.SimpleQueueService.NonExistentQueue", queue: missingQ,
			sdk: func(ctx context.Context, cl *sqs.Client, q sqsQueues) error {
				_, err := cl.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: &q.missing, AttributeNames: []types.QueueAttributeName{"All"}})
				return err
			},
			cli: func(q sqsQueues) []string {
				return []string{"sqs", "get-queue-attributes", "--queue-url", q.missing, "--attribute-names", "All"}
			}},
		{op: "SetQueueAttributes", name: "AWS.SimpleQueueService.NonExistentQueue", queue: missingQ,
			sdk: func(ctx context.Context, cl *sqs.Client, q sqsQueues) error {
				_, err := cl.SetQueueAttributes(ctx, &sqs.SetQueueAttributesInput{QueueUrl: &q.missing, Attributes: map[string]string{"VisibilityTimeout": "5"}})
				return err
			},
			cli: func(q sqsQueues) []string {
				return []string{"sqs", "set-queue-attributes", "--queue-url", q.missing, "--attributes", `{"VisibilityTimeout":"5"}`}
			}},
		{op: "PurgeQueue", name: "AWS.SimpleQueueService.NonExistentQueue", queue: missingQ,
			sdk: func(ctx context.Context, cl *sqs.Client, q sqsQueues) error {
				_, err := cl.PurgeQueue(ctx, &sqs.PurgeQueueInput{QueueUrl: &q.missing})
				return err
			},
			cli: func(q sqsQueues) []string { return []string{"sqs", "purge-queue", "--queue-url", q.missing} }},
		{op: "DeleteQueue", name: "AWS.SimpleQueueService.NonExistentQueue", queue: missingQ,
			sdk: func(ctx context.Context, cl *sqs.Client, q sqsQueues) error {
				_, err := cl.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: &q.missing})
				return err
			},
			cli: func(q sqsQueues) []string { return []string{"sqs", "delete-queue", "--queue-url", q.missing} }},
		{op: "ListQueueTags", name: "AWS.SimpleQueueService.NonExistentQueue", queue: missingQ,
			sdk: func(ctx context.Context, cl *sqs.Client, q sqsQueues) error {
				_, err := cl.ListQueueTags(ctx, &sqs.ListQueueTagsInput{QueueUrl: &q.missing})
				return err
			},
			cli: func(q sqsQueues) []string { return []string{"sqs", "list-queue-tags", "--queue-url", q.missing} }},
		// Named by QueueName, not QueueUrl.
		{op: "GetQueueUrl", name: "AWS.SimpleQueueService.NonExistentQueue", queue: missingQ,
			sdk: func(ctx context.Context, cl *sqs.Client, q sqsQueues) error {
				_, err := cl.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: awssdk.String(queueName(q.missing))})
				return err
			},
			cli: func(q sqsQueues) []string {
				return []string{"sqs", "get-queue-url", "--queue-name", queueName(q.missing)}
			}},
	}
	for _, wire := range []string{"json", "query"} {
		q := sqsQueues{present: base + "present-" + wire, small: smallQueue(ctx, t, cl, "small-"+wire, nil), missing: base + "missing-" + wire}
		if _, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("present-" + wire)}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range cases {
			t.Run(wire+"/"+tc.op+"/"+tc.name, func(t *testing.T) {
				n := tp.ev.len()
				var code string
				if wire == "json" {
					ae, ok := apiErrOf(tc.sdk(ctx, cl, q))
					if !ok {
						t.Fatalf("%s over JSON did not fail with an API error", tc.op)
					}
					code = ae.code
				} else {
					var op string
					if code, op = newCLI(t, tp.url).fail(ctx, tc.cli(q)...); op != tc.op {
						t.Fatalf("the CLI ran %s, want %s", op, tc.op)
					}
				}
				if code != tc.name {
					t.Errorf("the %s client shows %s, want %s (the same in both wire forms)", wire, code, tc.name)
				}
				var broker []errtrack.Event
				for _, e := range tp.ev.since(n) {
					if e.Category == errtrack.BrokerError {
						broker = append(broker, e)
					}
				}
				edge := pathway.Edge{Direction: tc.dir, Type: pathway.TypeSQS, Topic: queueName(tc.queue(q))}
				if len(broker) != 1 || broker[0].Operation != tc.op || broker[0].Name != tc.name || broker[0].Edge != edge {
					t.Errorf("broker errors %+v; want one for %s named %s on %s", broker, tc.op, tc.name, edge)
				}
			})
		}
	}
}

// TestSQSFailedAckEntriesTracked: a DeleteMessageBatch or ChangeMessageVisibilityBatch with one
// good receipt handle and one bad, by a JSON and a Query client through the proxy to
// local-aws-sqs. The failed entry (a message not deleted is delivered again) is one broker error
// with its code on the queue's consume edge; the good one is nothing.
func TestSQSFailedAckEntriesTracked(t *testing.T) {
	tp, _, cl, qurl, ctx := sqsSetup(t, "acks", nil)
	edge := pathway.Edge{Direction: pathway.In, Type: pathway.TypeSQS, Topic: "acks"}
	cases := []struct {
		op  string
		sdk func(good string) ([]types.BatchResultErrorEntry, error)
		cli func(good string) []string
	}{
		{"ChangeMessageVisibilityBatch",
			func(good string) ([]types.BatchResultErrorEntry, error) {
				out, err := cl.ChangeMessageVisibilityBatch(ctx, &sqs.ChangeMessageVisibilityBatchInput{QueueUrl: &qurl,
					Entries: []types.ChangeMessageVisibilityBatchRequestEntry{
						{Id: awssdk.String("good"), ReceiptHandle: &good, VisibilityTimeout: 60},
						{Id: awssdk.String("bad"), ReceiptHandle: awssdk.String("bogus"), VisibilityTimeout: 60}}})
				if err != nil {
					return nil, err
				}
				return out.Failed, nil
			},
			func(good string) []string {
				return []string{"sqs", "change-message-visibility-batch", "--queue-url", qurl, "--entries",
					`[{"Id":"good","ReceiptHandle":"` + good + `","VisibilityTimeout":60},{"Id":"bad","ReceiptHandle":"bogus","VisibilityTimeout":60}]`}
			}},
		{"DeleteMessageBatch",
			func(good string) ([]types.BatchResultErrorEntry, error) {
				out, err := cl.DeleteMessageBatch(ctx, &sqs.DeleteMessageBatchInput{QueueUrl: &qurl,
					Entries: []types.DeleteMessageBatchRequestEntry{
						{Id: awssdk.String("good"), ReceiptHandle: &good}, {Id: awssdk.String("bad"), ReceiptHandle: awssdk.String("bogus")}}})
				if err != nil {
					return nil, err
				}
				return out.Failed, nil
			},
			func(good string) []string {
				return []string{"sqs", "delete-message-batch", "--queue-url", qurl, "--entries",
					`[{"Id":"good","ReceiptHandle":"` + good + `"},{"Id":"bad","ReceiptHandle":"bogus"}]`}
			}},
	}
	for _, wire := range []string{"json", "query"} {
		for _, tc := range cases {
			t.Run(wire+"/"+tc.op, func(t *testing.T) {
				if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: awssdk.String(wire + " " + tc.op)}); err != nil {
					t.Fatal(err)
				}
				got := receiveAll(ctx, t, cl, qurl, 1, nil)
				good := awssdk.ToString(got[0].ReceiptHandle)
				n := tp.ev.len()
				var failed []string
				if wire == "json" {
					fs, err := tc.sdk(good)
					if err != nil {
						t.Fatalf("%s: %v", tc.op, err)
					}
					for _, f := range fs {
						failed = append(failed, awssdk.ToString(f.Id)+" "+awssdk.ToString(f.Code))
					}
				} else {
					var out struct{ Failed []struct{ Id, Code string } }
					newCLI(t, tp.url).run(ctx, &out, tc.cli(good)...)
					for _, f := range out.Failed {
						failed = append(failed, f.Id+" "+f.Code)
					}
				}
				if len(failed) != 1 || failed[0] != "bad ReceiptHandleIsInvalid" {
					t.Fatalf("%s answered failures %q, want only bad ReceiptHandleIsInvalid; the emulator changed", tc.op, failed)
				}
				evs := tp.ev.since(n)
				if len(evs) != 1 {
					t.Fatalf("%d events %+v, want one broker error for entry bad", len(evs), evs)
				}
				e := evs[0]
				if e.Category != errtrack.BrokerError || e.Operation != tc.op || e.Name != "ReceiptHandleIsInvalid" || e.Edge != edge ||
					e.Messages != 1 || e.Retriable || !strings.Contains(e.Message, "entry bad") {
					t.Errorf("event %+v; want a broker error for %s, ReceiptHandleIsInvalid, on %s, 1 message, not retriable, naming entry bad", e, tc.op, edge)
				}
			})
		}
	}
}
