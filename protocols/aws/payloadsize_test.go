package aws

import (
	"slices"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	ktypes "github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// The produce checkpoint's PayloadSize, as dsm-protocol.md §3.3 and §3.5 define it for the Go
// tracer, computed here from the values the client sends (not from anything the proxy parsed).

// sqsDocSize is the Go tracer's SQS send size: len(MessageBody) + Σ over the message's own
// attributes (a client-set `_datadog` included: the checkpoint is taken before injection) of
// len(name) + len(DataType) + len(StringValue) + len(BinaryValue), all in bytes (BinaryValue raw,
// not base64).
func sqsDocSize(body string, attrs map[string]types.MessageAttributeValue) int64 {
	n := len(body)
	for name, v := range attrs {
		n += len(name) + len(awssdk.ToString(v.DataType)) + len(awssdk.ToString(v.StringValue)) + len(v.BinaryValue)
	}
	return int64(n)
}

// kinesisDocSize is the Go tracer's Kinesis put size: len(Data) + len(PartitionKey) (no
// ExplicitHashKey, no `_datadog` the proxy may add to the data).
func kinesisDocSize(data []byte, pk string) int64 { return int64(len(data) + len(pk)) }

func binAttr(b []byte) types.MessageAttributeValue {
	return types.MessageAttributeValue{DataType: awssdk.String("Binary"), BinaryValue: b}
}

func numAttr(v string) types.MessageAttributeValue {
	return types.MessageAttributeValue{DataType: awssdk.String("Number"), StringValue: awssdk.String(v)}
}

// checkBatchSizes compares the produce sizes got after the first singles (which the caller
// checked in order) with want's: a batch's points follow the answer's order, so as sorted lists.
func checkBatchSizes(t *testing.T, what string, got, want []int64, singles int) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d produce points, want %d", what, len(got), len(want))
		return
	}
	if gb, wb := slices.Sorted(slices.Values(got[singles:])), slices.Sorted(slices.Values(want[singles:])); !slices.Equal(gb, wb) {
		t.Errorf("%s: produce sizes %v, want %v", what, gb, wb)
	}
}

func pointSizes(t *testing.T, tp *testProxy, typ, topic string) []int64 {
	t.Helper()
	var out []int64
	for _, p := range tp.rec.withTags("direction:out", "topic:"+topic, "type:"+typ) {
		out = append(out, p.PayloadSize)
	}
	return out
}

// TestPayloadSizeSQSSend: SendMessage and SendMessageBatch produce points carry exactly the Go
// tracer's size, for bodies with multi-byte and JSON-escaped characters and String, Number,
// custom-typed, Binary and client-set `_datadog` attributes.
func TestPayloadSizeSQSSend(t *testing.T) {
	tp, up, cl, qurl, ctx := sqsSetup(t, "sizes", nil)
	type msg struct {
		body  string
		attrs map[string]types.MessageAttributeValue
	}
	single := []msg{
		{body: "plain"},
		{body: "h\u00e9llo \u2713 \"q\" <a&b>\n\ttab", attrs: map[string]types.MessageAttributeValue{
			"color":       strAttr("blu\u00e9 \"x\""),
			"count":       numAttr("-12.50"),
			"blob":        binAttr([]byte{0, 1, 2, 0xfe, 0xff, '"'}),
			"kind":        {DataType: awssdk.String("String.custom"), StringValue: awssdk.String("v")},
			"weight":      {DataType: awssdk.String("Number.float"), StringValue: awssdk.String("3.25")},
			"blob.custom": {DataType: awssdk.String("Binary.gz"), BinaryValue: []byte("\x1f\x8b")},
		}},
		// A traced producer's own `_datadog` (trace ids, no pathway): the proxy checkpoints the
		// message, and the attribute, present before injection, counts.
		{body: "traced", attrs: map[string]types.MessageAttributeValue{
			ddAttr:  strAttr(`{"x-datadog-trace-id":"123","x-datadog-parent-id":"456"}`),
			"other": strAttr("o"),
		}},
	}
	var want []int64
	for i, m := range single {
		if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: &m.body, MessageAttributes: m.attrs}); err != nil {
			t.Fatalf("SendMessage %d: %v", i, err)
		}
		want = append(want, sqsDocSize(m.body, m.attrs))
	}
	if got := pointSizes(t, tp, "sqs", "sizes"); !slices.Equal(got, want) {
		t.Errorf("SendMessage produce sizes %v, want %v", got, want)
	}

	batch := []msg{
		{body: "b0"},
		{body: "batch \u00fcml\u00e4ut", attrs: map[string]types.MessageAttributeValue{"n": numAttr("7"), "s": strAttr("str")}},
		{body: "bin", attrs: map[string]types.MessageAttributeValue{"raw": binAttr([]byte("0123456789abcdef"))}},
		{body: "dd", attrs: map[string]types.MessageAttributeValue{ddAttr: strAttr(`{"x-datadog-trace-id":"9"}`)}},
	}
	var entries []types.SendMessageBatchRequestEntry
	for i, m := range batch {
		entries = append(entries, types.SendMessageBatchRequestEntry{Id: awssdk.String(string(rune('a' + i))), MessageBody: awssdk.String(m.body), MessageAttributes: m.attrs})
		want = append(want, sqsDocSize(m.body, m.attrs))
	}
	out, err := cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &qurl, Entries: entries})
	if err != nil || len(out.Failed) != 0 || len(out.Successful) != len(batch) {
		t.Fatalf("SendMessageBatch: %v %+v", err, out)
	}
	checkBatchSizes(t, "SendMessageBatch", pointSizes(t, tp, "sqs", "sizes"), want, len(single))
	if want[1] != 140 || want[2] != 6+(8+6+56)+(5+6+1) {
		// A guard that the rule itself is the doc's: the second message by hand is 25 body
		// bytes + color 5+6+9 + count 5+6+6 + blob 4+6+6 + kind 4+13+1 + weight 6+12+4
		// + blob.custom 11+9+2 = 140; the third counts its own `_datadog` (8+6+56).
		t.Errorf("rule self-check: sizes %v, want 140 and 88 for the second and third messages", want)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestPayloadSizeKinesisPut: PutRecord and PutRecords produce points carry len(Data) +
// len(PartitionKey), with injection on (the size is the client's record, before `_datadog`) and
// an ExplicitHashKey that does not count.
func TestPayloadSizeKinesisPut(t *testing.T) {
	tp, up, kc, ctx := kinesisSetup(t, "sizes", func(c *Config) { c.KinesisInjectData = true })
	stream := awssdk.String("sizes")
	type rec struct {
		data []byte
		pk   string
		ehk  *string
	}
	single := []rec{
		{data: []byte(`{"user":"u1","n":1}`), pk: "u1"},
		{data: []byte{0xf3, 0x89, 0x9a, 0xc2, 0x00}, pk: "p\u00e9k", ehk: awssdk.String("12345")},
	}
	var want []int64
	for i, r := range single {
		if _, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: r.data, PartitionKey: awssdk.String(r.pk), ExplicitHashKey: r.ehk}); err != nil {
			t.Fatalf("PutRecord %d: %v", i, err)
		}
		want = append(want, kinesisDocSize(r.data, r.pk))
	}
	if got := pointSizes(t, tp, "kinesis", "sizes"); !slices.Equal(got, want) {
		t.Errorf("PutRecord produce sizes %v, want %v", got, want)
	}
	batch := []rec{
		{data: []byte(`{}`), pk: "k"},
		{data: []byte("not json at all, 30 bytes long"), pk: "partition-key-2"},
		{data: []byte(`{"_datadog":{"x-datadog-trace-id":"1"},"v":[1,2,3]}`), pk: "k3", ehk: awssdk.String("0")},
	}
	var entries []ktypes.PutRecordsRequestEntry
	for _, r := range batch {
		entries = append(entries, ktypes.PutRecordsRequestEntry{Data: r.data, PartitionKey: awssdk.String(r.pk), ExplicitHashKey: r.ehk})
		want = append(want, kinesisDocSize(r.data, r.pk))
	}
	pr, err := kc.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: stream, Records: entries})
	if err != nil || awssdk.ToInt32(pr.FailedRecordCount) != 0 {
		t.Fatalf("PutRecords: %v %+v", err, pr)
	}
	checkBatchSizes(t, "PutRecords", pointSizes(t, tp, "kinesis", "sizes"), want, len(single))
	if want[1] != 9 || want[3] != 45 {
		t.Errorf("rule self-check: sizes %v, want 9 (5 data + 4 key bytes) and 45 (30 + 15)", want)
	}
	if tp.Stats().Injected == 0 {
		t.Errorf("no record injected: the test is meant to show the size is taken before injection")
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestPayloadSizeKinesisCBOR: the same rule over Kinesis CBOR (Java SDKs' default wire form).
func TestPayloadSizeKinesisCBOR(t *testing.T) {
	tp, up, _, _ := kinesisSetup(t, "cborsizes", nil)
	cborCall(t, tp.url, "PutRecord", map[string]any{"StreamName": "cborsizes", "Data": []byte(`{"n":1}`), "PartitionKey": "p1"}, false)
	pr := cborCall(t, tp.url, "PutRecords", map[string]any{"StreamName": "cborsizes", "Records": []any{
		map[string]any{"Data": []byte{1, 2, 3}, "PartitionKey": "p\u00e9"},
		map[string]any{"Data": []byte("0123456789"), "PartitionKey": "key-three", "ExplicitHashKey": "42"},
	}}, true)
	if n, _ := cborNumber(pr["FailedRecordCount"]); n != 0 {
		t.Fatalf("PutRecords: %v", pr)
	}
	want := []int64{kinesisDocSize([]byte(`{"n":1}`), "p1"), kinesisDocSize([]byte{1, 2, 3}, "p\u00e9"), kinesisDocSize([]byte("0123456789"), "key-three")}
	got := pointSizes(t, tp, "kinesis", "cborsizes")
	slices.Sort(got[min(1, len(got)):])
	slices.Sort(want[1:])
	if !slices.Equal(got, want) {
		t.Errorf("CBOR produce sizes %v, want %v", got, want)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}
