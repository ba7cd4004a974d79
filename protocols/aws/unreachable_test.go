package aws

import (
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestUnreachableUpstreamErrorsTracked: while the upstream is gone (its listener closed), the
// proxy answers the SDK 502 ServiceUnavailable, which it retries; each of those SQS errors is
// tracked on its queue's edge, as the upstream's own errors are: a send on the produce edge
// with its message, a long poll on the consume edge.
func TestUnreachableUpstreamErrorsTracked(t *testing.T) {
	var logs syncbuf.Buffer
	tp, up, _, qurl, ctx := sqsSetup(t, "gone-upstream", func(c *Config) { c.Log = zerolog.New(&logs) })
	cl := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url),
		Credentials: sqsClient(tp.url, testKey, testSecret).Options().Credentials, AppID: "orders-api", RetryMaxAttempts: 1})
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: awssdk.String("before")}); err != nil {
		t.Fatal(err)
	}
	up.srv.Close()
	_, serr := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: awssdk.String("during")})
	_, rerr := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &qurl, WaitTimeSeconds: 1})
	for what, err := range map[string]error{"SendMessage": serr, "ReceiveMessage": rerr} {
		ae, ok := apiErrOf(err)
		if !ok || ae.status != 502 || ae.code != "ServiceUnavailable" {
			t.Fatalf("%s while the upstream is gone: %v, want the proxy's 502 ServiceUnavailable", what, err)
		}
	}
	want := map[string]pathway.Edge{
		"SendMessage":    {Direction: pathway.Out, Type: pathway.TypeSQS, Topic: "gone-upstream"},
		"ReceiveMessage": {Direction: pathway.In, Type: pathway.TypeSQS, Topic: "gone-upstream"},
	}
	got := map[string]errtrack.Event{}
	for _, ev := range tp.ev.all() {
		if ev.Category == errtrack.BrokerError {
			got[ev.Operation] = ev
		}
	}
	for op, e := range want {
		ev, ok := got[op]
		if !ok {
			t.Errorf("%s: its 502 was not tracked (events %+v)", op, tp.ev.all())
			continue
		}
		if ev.Edge != e || ev.Code != 502 || ev.Name != "ServiceUnavailable" || !ev.Retriable || ev.Protocol != "sqs" {
			t.Errorf("%s: tracked %+v, want a retriable 502 ServiceUnavailable on %+v", op, ev, e)
		}
	}
	if ev := got["SendMessage"]; ev.Messages != 1 {
		t.Errorf("SendMessage's 502 tracked with %d messages, want 1", ev.Messages)
	}
	// With many queues behind one front, the line says whose requests fail.
	waitForLog(t, &logs, "upstream request failed; answered 502")
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "answered 502") && !strings.Contains(line, `"topic":"gone-upstream"`) {
			t.Errorf("the 502 line does not name the queue:\n%s", line)
		}
	}
}
