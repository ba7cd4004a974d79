package aws

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
)

// snsDocSize is the payload size of an SNS Publish or PublishBatch entry as the proxy computes it
// (sns.go: snsQuery and snsJSON pass len(Message)+len(Subject) and the client's attributes to
// prepareOut), computed here from the values the client sends:
//
//	len(Message) + len(Subject)
//	+ Σ over the message's own attributes (a client-set `_datadog` included: the checkpoint is
//	  taken before injection) of len(name) + len(DataType) + len(StringValue) + len(BinaryValue),
//
// all in UTF-8 bytes, BinaryValue raw (not its base64).
//
// Where this departs from the Go tracer's rule in dsm-protocol.md §3.4 ("Go size: len(Message) +
// attribute sizes"; dd-trace-go's contrib/aws/aws-sdk-go-v2/internal/sns publishInputSize and
// publishBatchEntrySize): the proxy also counts Subject, which only the Python rule in the same
// section has ("Python: Message + MessageAttributes + synthetic `_datadog` + Subject +
// MessageGroupId (+ context length)"). The rest of the Python rule (the attribute dict's key words,
// the synthetic `_datadog`, MessageGroupId, the context length) is not followed: apart from
// Subject this is the Go rule, the same per-attribute sum as sqsDocSize. So a message without a
// Subject has the Go tracer's size, and one with a Subject is len(Subject) bytes over it.
func snsDocSize(message, subject string, attrs map[string]snstypes.MessageAttributeValue) int64 {
	n := len(message) + len(subject)
	for name, v := range attrs {
		n += len(name) + len(awssdk.ToString(v.DataType)) + len(awssdk.ToString(v.StringValue)) + len(v.BinaryValue)
	}
	return int64(n)
}

func snsNumAttr(v string) snstypes.MessageAttributeValue {
	return snstypes.MessageAttributeValue{DataType: awssdk.String("Number"), StringValue: awssdk.String(v)}
}

func snsBinAttr(b []byte) snstypes.MessageAttributeValue {
	return snstypes.MessageAttributeValue{DataType: awssdk.String("Binary"), BinaryValue: b}
}

// snsSizeMsg is one message of the SNS size tests.
type snsSizeMsg struct {
	message, subject string
	attrs            map[string]snstypes.MessageAttributeValue
}

// snsSizeMessages are the SNS size tests' messages: bodies with multi-byte UTF-8 (2, 3 and 4
// bytes per character), characters JSON escapes (`"`, `\`, control characters, and `<>&`, which
// encoding/json writes as \u escapes) and characters form encoding changes (`&`, `+`, `%`, `=`);
// with and without Subject; String, Number and Binary attributes; a client-set `_datadog` as
// String and as Binary (trace ids only, no pathway: the proxy checkpoints the message, and the
// attribute, present before injection, counts).
func snsSizeMessages() (single, batch []snsSizeMsg) {
	single = []snsSizeMsg{
		{message: "plain"},
		{message: "plain with a subject", subject: "Hello"},
		{message: "h\u00e9llo \u2713 \U0001F600 \"q\" back\\slash <a&b> 50% a+b=c\n\ttab\r\u0001", subject: "Order #1: 50% & more=+yes",
			attrs: map[string]snstypes.MessageAttributeValue{
				"color": snsStrAttr("blu\u00e9 \"x\" <&> \u2713"),
				"count": snsNumAttr("-12.50"),
				"blob":  snsBinAttr([]byte{0, 1, 2, 0xfe, 0xff, '"', '\\', 0xfb, 0xef}),
			}},
		{message: "traced", subject: "S",
			attrs: map[string]snstypes.MessageAttributeValue{
				ddAttr:  snsStrAttr(`{"x-datadog-trace-id":"123","x-datadog-parent-id":"456"}`),
				"other": snsStrAttr("o"),
			}},
	}
	batch = []snsSizeMsg{
		{message: "b0"},
		{message: "batch \u00fcml\u00e4ut \u00e9\u00e8 \U0001F680 & + % =", subject: "Batch subject, 2",
			attrs: map[string]snstypes.MessageAttributeValue{"n": snsNumAttr("7"), "s": snsStrAttr("str \u00df")}},
		{message: "bin \"quoted\" \\", attrs: map[string]snstypes.MessageAttributeValue{"raw": snsBinAttr([]byte("0123456789abcdef\x00\xff"))}},
		{message: "dd binary", subject: "traced",
			attrs: map[string]snstypes.MessageAttributeValue{ddAttr: snsBinAttr([]byte(`{"x-datadog-trace-id":"9"}`))}},
	}
	return single, batch
}

// TestPayloadSizeSNSPublish: Publish and PublishBatch through the proxy to fauxqs with
// aws-sdk-go-v2's SNS client (the Query protocol) make one direction:out, type:sns,
// topic:<topic name> point per message whose PayloadSize is exactly snsDocSize of what the client
// sent.
func TestPayloadSizeSNSPublish(t *testing.T) {
	up := snsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sn := snsClient(tp.url, "publisher")
	topic, err := sn.CreateTopic(ctx, &sns.CreateTopicInput{Name: awssdk.String("snssizes")})
	if err != nil {
		t.Fatalf("CreateTopic through proxy: %v", err)
	}
	single, batch := snsSizeMessages()
	var want []int64
	for i, m := range single {
		in := &sns.PublishInput{TopicArn: topic.TopicArn, Message: awssdk.String(m.message), MessageAttributes: m.attrs}
		if m.subject != "" {
			in.Subject = awssdk.String(m.subject)
		}
		if _, err := sn.Publish(ctx, in); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
		want = append(want, snsDocSize(m.message, m.subject, m.attrs))
	}
	if got := pointSizes(t, tp, "sns", "snssizes"); !slices.Equal(got, want) {
		t.Errorf("Publish produce sizes %v, want %v", got, want)
	}

	var entries []snstypes.PublishBatchRequestEntry
	for i, m := range batch {
		en := snstypes.PublishBatchRequestEntry{Id: awssdk.String(fmt.Sprintf("e%d", i)), Message: awssdk.String(m.message), MessageAttributes: m.attrs}
		if m.subject != "" {
			en.Subject = awssdk.String(m.subject)
		}
		entries = append(entries, en)
		want = append(want, snsDocSize(m.message, m.subject, m.attrs))
	}
	pb, err := sn.PublishBatch(ctx, &sns.PublishBatchInput{TopicArn: topic.TopicArn, PublishBatchRequestEntries: entries})
	if err != nil || len(pb.Failed) != 0 || len(pb.Successful) != len(batch) {
		t.Fatalf("PublishBatch: %v %+v", err, pb)
	}
	checkBatchSizes(t, "PublishBatch", pointSizes(t, tp, "sns", "snssizes"), want, len(single))
	snsSizeSelfCheck(t, want)

	// The messages were really sent in the Query form, Subject and all, and injected.
	bodies, _ := up.seen()
	var publishes, subjects int
	for _, b := range bodies {
		if strings.HasPrefix(b, "Action=Publish") {
			publishes++
			subjects += strings.Count(b, "Subject=")
		}
	}
	if publishes != len(single)+1 || subjects != 5 {
		t.Errorf("upstream saw %d Publish/PublishBatch form bodies with %d Subjects, want %d and 5", publishes, subjects, len(single)+1)
	}
	if n := tp.Stats().Injected; n != uint64(len(single)+len(batch)) {
		t.Errorf("injected %d messages, want %d", n, len(single)+len(batch))
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// snsSizeSelfCheck is a guard that snsDocSize is the rule it says, worked by hand for the third
// single message and the last batch one (want lists the single messages, then the batch).
func snsSizeSelfCheck(t *testing.T, want []int64) {
	t.Helper()
	// message: "h\u00e9llo" 6 + " \u2713" 4 + " \U0001F600" 5 + ` "q"` 4 + ` back\slash` 11 + " <a&b>" 6
	// + " 50%" 4 + " a+b=c" 6 + "\n\ttab\r\u0001" 7 = 53; Subject 25;
	// color 5+6+(3+2+1+3+1+3+1+3)=28, count 5+6+6=17, blob 4+6+9=19: 53+25+28+17+19 = 142.
	// last batch entry: 9 + Subject 6 + `_datadog` 8+6+26 = 55.
	if len(want) != 8 || want[2] != 142 || want[7] != 55 {
		t.Errorf("rule self-check: sizes %v, want 142 for the third message and 55 for the last", want)
	}
}

// snsJSONWireAttr is an SNS attribute as the JSON protocol sends it (BinaryValue base64, which
// encoding/json does for a []byte).
type snsJSONWireAttr struct {
	DataType    string
	StringValue *string `json:",omitempty"`
	BinaryValue []byte  `json:",omitempty"`
}

func snsJSONWireAttrs(m map[string]snstypes.MessageAttributeValue) map[string]snsJSONWireAttr {
	if m == nil {
		return nil
	}
	out := map[string]snsJSONWireAttr{}
	for k, v := range m {
		out[k] = snsJSONWireAttr{DataType: awssdk.ToString(v.DataType), StringValue: v.StringValue, BinaryValue: v.BinaryValue}
	}
	return out
}

// snsJSONEscapes rewrites the non-ASCII characters of a JSON text as \u escapes (surrogate pairs
// past U+FFFF), which is valid JSON for the same values: the proxy must count the decoded bytes.
func snsJSONEscapes(b []byte) []byte {
	var out strings.Builder
	for _, r := range string(b) {
		switch {
		case r < 0x80:
			out.WriteRune(r)
		case r <= 0xffff:
			fmt.Fprintf(&out, `\u%04x`, r)
		default:
			r -= 0x10000
			fmt.Fprintf(&out, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		}
	}
	return []byte(out.String())
}

// TestPayloadSizeSNSJSONRewrite: the same messages in SNS's JSON protocol (X-Amz-Target
// AmazonSimpleNotificationService.*), with every non-ASCII character and `<>&` written as \u
// escapes, give the same snsDocSize. No npm SNS emulator serves this protocol (fauxqs routes it to
// its SQS handler; see TestSNSDatadogBinaryAttributeJSON), so the proxy's rewrite is driven as
// TestSNSJSONRewriteProducePoint does: rewriteRequest, then the fixer with an SNS JSON success
// answer.
func TestPayloadSizeSNSJSONRewrite(t *testing.T) {
	const arn = "arn:aws:sns:us-east-1:000000000000:snsjsonsizes"
	single, batch := snsSizeMessages()
	type wireMsg struct {
		Id                string `json:",omitempty"`
		TopicArn          string `json:",omitempty"`
		Message           string
		Subject           string                     `json:",omitempty"`
		MessageAttributes map[string]snsJSONWireAttr `json:",omitempty"`
	}
	rec := &recorder{}
	p, err := New(Config{Listen: "127.0.0.1:0", TrustClients: true, Upstream: "http://127.0.0.1:9", Observer: rec,
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, "")})
	if err != nil {
		t.Fatal(err)
	}
	send := func(op string, v any, resp string) {
		t.Helper()
		body, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		body = snsJSONEscapes(body)
		if !json.Valid(body) {
			t.Fatalf("test body is not JSON: %s", body)
		}
		_, fix := p.rewriteRequest(fuzzCall(ServiceSNS, op, wireJSON11, body))
		if fix == nil {
			t.Fatalf("%s: no answer fixer", op)
		}
		fix([]byte(resp))
	}
	var want []int64
	for i, m := range single {
		send("Publish", wireMsg{TopicArn: arn, Message: m.message, Subject: m.subject, MessageAttributes: snsJSONWireAttrs(m.attrs)},
			fmt.Sprintf(`{"MessageId":"%08d-1b2c-4d5e-8f90-123456789abc"}`, i))
		want = append(want, snsDocSize(m.message, m.subject, m.attrs))
	}
	var entries []wireMsg
	var ok []string
	for i, m := range batch {
		id := fmt.Sprintf("e%d", i)
		entries = append(entries, wireMsg{Id: id, Message: m.message, Subject: m.subject, MessageAttributes: snsJSONWireAttrs(m.attrs)})
		ok = append(ok, fmt.Sprintf(`{"Id":%q,"MessageId":"%08d-1b2c-4d5e-8f90-123456789abc"}`, id, i))
		want = append(want, snsDocSize(m.message, m.subject, m.attrs))
	}
	send("PublishBatch", struct {
		TopicArn                   string
		PublishBatchRequestEntries []wireMsg
	}{arn, entries}, `{"Successful":[`+strings.Join(ok, ",")+`],"Failed":[]}`)
	var got []int64
	for _, pt := range rec.withTags("direction:out", "type:sns", "topic:snsjsonsizes") {
		got = append(got, pt.PayloadSize)
	}
	if !slices.Equal(got, want) {
		t.Errorf("SNS JSON produce sizes %v, want %v", got, want)
	}
	snsSizeSelfCheck(t, want)
}
