package aws

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// cliAttrsJSON is the --message-attributes (or an entry's MessageAttributes) value the AWS CLI
// takes for attrs: Binary values base64, as CLI v2 reads blobs by default.
func cliAttrsJSON(attrs map[string]types.MessageAttributeValue) map[string]map[string]string {
	if len(attrs) == 0 {
		return nil
	}
	out := map[string]map[string]string{}
	for k, v := range attrs {
		a := map[string]string{"DataType": awssdk.ToString(v.DataType)}
		if v.StringValue != nil {
			a["StringValue"] = *v.StringValue
		} else {
			a["BinaryValue"] = base64.StdEncoding.EncodeToString(v.BinaryValue)
		}
		out[k] = a
	}
	return out
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestPayloadSizeSQSQuery: SendMessage and SendMessageBatch sent in the AWS Query form (Debian's
// awscli 2.9, which speaks Query to SQS) through the proxy to local-aws-sqs make produce points of
// exactly sqsDocSize (dsm-protocol.md §3.3, the Go tracer's rule) of the values the client sent,
// the same sizes the JSON 1.0 form (aws-sdk-go-v2) gives for the same messages, which this test
// also sends. Bodies and attribute values hold `&`, `+`, `%`, `=`, spaces and multi-byte UTF-8,
// which the form percent-encodes, and Binary values whose base64 has `+` and `/`: the size is of
// the decoded values, never of their encoding.
func TestPayloadSizeSQSQuery(t *testing.T) {
	tp, up, cl, qurl, ctx := sqsSetup(t, "qsizes", nil)
	jq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("qsizesjson")})
	if err != nil {
		t.Fatalf("CreateQueue qsizesjson: %v", err)
	}
	jurl := *jq.QueueUrl
	aws := newCLI(t, tp.url)
	type msg struct {
		body  string
		attrs map[string]types.MessageAttributeValue
	}
	single := []msg{
		{body: "plain"},
		{body: "a&b=c+d %20 100% \u00e9\u2713 \U0001F600 x=y&z+", attrs: map[string]types.MessageAttributeValue{
			"tenant": strAttr("v&w=x+y%z \u00fc"),
			"count":  numAttr("-12.50"),
			"blob":   binAttr([]byte{0xfb, 0xff, 0xbf, '&', '=', '+'}), // base64 "+/+/Jj0r"
			"kind":   {DataType: awssdk.String("String.custom"), StringValue: awssdk.String("a=b&c")},
		}},
		{body: "traced %26", attrs: map[string]types.MessageAttributeValue{
			ddAttr:  strAttr(`{"x-datadog-trace-id":"123","x-datadog-parent-id":"456"}`),
			"other": strAttr("o+o"),
		}},
	}
	batch := []msg{
		{body: "b0"},
		{body: "batch & + % = \u00fcml\u00e4ut", attrs: map[string]types.MessageAttributeValue{"n": numAttr("7"), "s": strAttr("x+y=z%")}},
		{body: "bin", attrs: map[string]types.MessageAttributeValue{"raw": binAttr([]byte("0123456789abcdef\xfb\xff"))}},
		{body: "dd=1&x", attrs: map[string]types.MessageAttributeValue{ddAttr: strAttr(`{"x-datadog-trace-id":"9"}`)}},
	}

	var want []int64
	for _, m := range single {
		args := []string{"sqs", "send-message", "--queue-url", qurl, "--message-body", m.body}
		if len(m.attrs) > 0 {
			args = append(args, "--message-attributes", mustJSON(t, cliAttrsJSON(m.attrs)))
		}
		aws.run(ctx, nil, args...)
		want = append(want, sqsDocSize(m.body, m.attrs))
		if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &jurl, MessageBody: &m.body, MessageAttributes: m.attrs}); err != nil {
			t.Fatalf("JSON SendMessage: %v", err)
		}
	}
	if got := pointSizes(t, tp, "sqs", "qsizes"); !slices.Equal(got, want) {
		t.Errorf("Query SendMessage produce sizes %v, want %v", got, want)
	}
	if got := pointSizes(t, tp, "sqs", "qsizesjson"); !slices.Equal(got, want) {
		t.Errorf("JSON SendMessage produce sizes %v, want %v (the Query form's)", got, want)
	}

	type cliEntry struct {
		Id                string
		MessageBody       string
		MessageAttributes map[string]map[string]string `json:",omitempty"`
	}
	var entries []cliEntry
	var sdkEntries []types.SendMessageBatchRequestEntry
	for i, m := range batch {
		id := fmt.Sprintf("e%d", i)
		entries = append(entries, cliEntry{Id: id, MessageBody: m.body, MessageAttributes: cliAttrsJSON(m.attrs)})
		sdkEntries = append(sdkEntries, types.SendMessageBatchRequestEntry{Id: awssdk.String(id), MessageBody: awssdk.String(m.body), MessageAttributes: m.attrs})
		want = append(want, sqsDocSize(m.body, m.attrs))
	}
	var bm struct {
		Successful []struct{ Id string }
		Failed     []any
	}
	aws.run(ctx, &bm, "sqs", "send-message-batch", "--queue-url", qurl, "--entries", mustJSON(t, entries))
	if len(bm.Successful) != len(batch) || len(bm.Failed) != 0 {
		t.Fatalf("send-message-batch: %+v", bm)
	}
	out, err := cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &jurl, Entries: sdkEntries})
	if err != nil || len(out.Failed) != 0 || len(out.Successful) != len(batch) {
		t.Fatalf("JSON SendMessageBatch: %v %+v", err, out)
	}
	for _, q := range []string{"qsizes", "qsizesjson"} {
		checkBatchSizes(t, q+": SendMessageBatch", pointSizes(t, tp, "sqs", q), want, len(single))
	}
	if want[1] != 113 {
		// A guard that the rule is the doc's, by hand: the body is 34 bytes ("a&b=c+d %20 100% "
		// 17, é 2, ✓ 3, " " 1, 😀 4, " x=y&z+" 7); tenant 6+6+12, count 5+6+6, blob 4+6+6 (raw
		// bytes, not the 8 of their base64), kind 4+13+5: 34 + 24 + 17 + 16 + 22 = 113.
		t.Errorf("rule self-check: size %d for the second message, want 113", want[1])
	}

	// The CLI spoke Query, and the form encoding changed the characters this test is about.
	bodies, _ := up.seen()
	var sends []string
	for _, b := range bodies {
		if strings.HasPrefix(b, "Action=SendMessage") {
			sends = append(sends, b)
		}
	}
	if len(sends) != len(single)+1 {
		t.Fatalf("upstream saw %d SendMessage/SendMessageBatch form bodies, want %d", len(sends), len(single)+1)
	}
	all := strings.Join(sends, "&")
	for _, enc := range []string{"%26", "%2B", "%25", "%3D", "%C3%A9", "%F0%9F%98%80"} {
		if !strings.Contains(strings.ToUpper(all), enc) {
			t.Errorf("no %s in the Query bodies sent: the test does not exercise form decoding", enc)
		}
	}
	// And the values the proxy forwarded decode to what the client sent.
	vals, err := url.ParseQuery(sends[1])
	if err != nil || vals.Get("MessageBody") != single[1].body {
		t.Errorf("second SendMessage upstream: MessageBody %q (%v), want %q", vals.Get("MessageBody"), err, single[1].body)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}
