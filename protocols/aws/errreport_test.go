package aws

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	ktypes "github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	"github.com/aws/smithy-go"
	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// The error reporting of Kinesis and SNS sends, end to end: the same request goes straight to the
// emulator (through the upstream check only) and through the proxy; the client must get the
// emulator's error unchanged, and the proxy must record the failed send as one broker error (and,
// the error being non-retriable, one loss) on the stream's or topic's produce edge.

// answerLog is an aws-sdk-go-v2 HTTP client that keeps every answer the SDK is given, to compare
// what a client reads through the proxy with what it reads from the emulator.
type answerLog struct {
	mu      sync.Mutex
	answers []rawResp
}

func (l *answerLog) Do(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	l.mu.Lock()
	l.answers = append(l.answers, rawResp{resp.StatusCode, resp.Header.Clone(), string(b)})
	l.mu.Unlock()
	return resp, nil
}

func (l *answerLog) all() []rawResp {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]rawResp(nil), l.answers...)
}

// apiErr is what an SDK client makes of an error answer.
type apiErr struct {
	typ, code, msg string
	fault          smithy.ErrorFault
	status         int
}

func apiErrOf(err error) (apiErr, bool) {
	var ae smithy.APIError
	var re *awshttp.ResponseError
	if !errors.As(err, &ae) || !errors.As(err, &re) {
		return apiErr{}, false
	}
	return apiErr{fmt.Sprintf("%T", ae), ae.ErrorCode(), ae.ErrorMessage(), ae.ErrorFault(), re.HTTPStatusCode()}, true
}

// since returns the events reported after the first n.
func (e *events) since(n int) []errtrack.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]errtrack.Event(nil), e.ev[n:]...)
}

func (e *events) len() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.ev)
}

// xmlRequestID matches the per-answer request id from an SNS (Query) error document.
var xmlRequestID = regexp.MustCompile(`<RequestId>[^<]*</RequestId>`)

// errCase is one failing send: op is the operation, messages how many messages it carries.
type errCase struct {
	op       string
	messages int
}

// checkErrorPassedAndReported compares the direct and the proxied failure of one call and checks
// the events the proxied call produced. wantType is the SDK error type the emulator's answer
// decodes to; edge is the produce edge of the missing stream or topic; svc the client's app id.
func checkErrorPassedAndReported(t *testing.T, tc errCase, wantType string, directErr, proxyErr error,
	direct, proxied []rawResp, upRequests int, evs []errtrack.Event, protocol string, edge pathway.Edge, svc string) {
	t.Helper()
	// What the emulator answers: the premise of the test.
	de, ok := apiErrOf(directErr)
	if !ok || de.typ != wantType {
		t.Fatalf("%s straight to the emulator: %v (%+v), want a %s; the emulator changed", tc.op, directErr, de, wantType)
	}
	if len(direct) != 1 {
		t.Fatalf("%s straight to the emulator: %d answers, want 1 (the SDK retried %s?)", tc.op, len(direct), de.code)
	}

	// 1. The client gets the emulator's error unchanged.
	pe, ok := apiErrOf(proxyErr)
	if !ok {
		t.Fatalf("%s through the proxy: %v, want the emulator's %s", tc.op, proxyErr, de.code)
	}
	if pe != de {
		t.Errorf("%s through the proxy: the client read %+v, straight from the emulator %+v", tc.op, pe, de)
	}
	if len(proxied) != 1 {
		t.Fatalf("%s through the proxy: %d answers, want 1", tc.op, len(proxied))
	}
	d, p := direct[0], proxied[0]
	if !strings.Contains(d.body, de.code) {
		t.Fatalf("%s: the emulator's answer %d %q does not name %s", tc.op, d.status, d.body, de.code)
	}
	if p.status != d.status || xmlRequestID.ReplaceAllString(p.body, "") != xmlRequestID.ReplaceAllString(d.body, "") {
		t.Errorf("%s through the proxy answered %d %q, the emulator %d %q", tc.op, p.status, p.body, d.status, d.body)
	}
	for _, h := range []string{"Content-Type", "X-Amzn-Errortype", "X-Amzn-Query-Error"} {
		if p.header.Get(h) != d.header.Get(h) {
			t.Errorf("%s through the proxy: %s %q, the emulator's %q", tc.op, h, p.header.Get(h), d.header.Get(h))
		}
	}
	if upRequests != 1 {
		t.Errorf("%s through the proxy: %d requests reached the emulator, want 1", tc.op, upRequests)
	}

	// 2. One broker error and one lost-message event, both naming the call and its edge; nothing else.
	var broker, lost, other []errtrack.Event
	for _, e := range evs {
		switch e.Category {
		case errtrack.BrokerError:
			broker = append(broker, e)
		case errtrack.LostMessage:
			lost = append(lost, e)
		default:
			other = append(other, e)
		}
	}
	if len(broker) != 1 {
		t.Errorf("%s refused with %s: %d broker_error events, want 1; events: %+v", tc.op, de.code, len(broker), evs)
	} else if e := broker[0]; e.Protocol != protocol || e.Operation != tc.op || e.Name != de.code || e.Code != int32(de.status) ||
		e.Message != de.msg || e.Retriable || e.Service != svc || e.Edge != edge || e.Partition != -1 || e.Messages != tc.messages {
		t.Errorf("%s broker_error event %+v; want protocol %s, operation %s, name %s, code %d, message %q, not retriable, service %s, edge %+v, partition -1, %d messages",
			tc.op, e, protocol, tc.op, de.code, de.status, de.msg, svc, edge, tc.messages)
	}
	if len(lost) != 1 {
		t.Errorf("%s refused with the non-retriable %s: %d lost_message events, want 1; events: %+v", tc.op, de.code, len(lost), evs)
	} else if e := lost[0]; e.Protocol != protocol || e.Operation != tc.op || e.Name != de.code || e.Code != int32(de.status) ||
		!strings.Contains(e.Message, de.msg) || e.Retriable || e.Service != svc || e.Edge != edge || e.Messages != tc.messages {
		t.Errorf("%s lost_message event %+v; want protocol %s, operation %s, name %s, code %d, edge %+v, %d messages",
			tc.op, e, protocol, tc.op, de.code, de.status, edge, tc.messages)
	}
	if len(other) != 0 {
		t.Errorf("%s: unexpected events %+v", tc.op, other)
	}
}

// TestKinesisMissingStreamErrorReported: PutRecord and PutRecords to a stream kinesis-local does
// not have. aws-sdk-go-v2 reads ResourceNotFoundException through the proxy exactly as straight
// from the emulator, and the proxy reports the refused send on the stream's produce edge.
func TestKinesisMissingStreamErrorReported(t *testing.T) {
	tp, up, _, ctx := kinesisSetup(t, "present", nil)
	const missing = "absent"
	records := func(n int) []ktypes.PutRecordsRequestEntry {
		var out []ktypes.PutRecordsRequestEntry
		for i := range n {
			out = append(out, ktypes.PutRecordsRequestEntry{Data: fmt.Appendf(nil, `{"n":%d}`, i), PartitionKey: awssdk.String(fmt.Sprint("k", i))})
		}
		return out
	}
	for _, tc := range []struct {
		errCase
		call func(*kinesis.Client) error
	}{
		{errCase{"PutRecord", 1}, func(cl *kinesis.Client) error {
			_, err := cl.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: awssdk.String(missing), Data: []byte(`{"n":1}`), PartitionKey: awssdk.String("k")})
			return err
		}},
		{errCase{"PutRecords", 3}, func(cl *kinesis.Client) error {
			_, err := cl.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: awssdk.String(missing), Records: records(3)})
			return err
		}},
	} {
		t.Run(tc.op, func(t *testing.T) {
			client := func(endpoint string, l *answerLog) *kinesis.Client {
				return kinesis.New(kinesis.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(endpoint), HTTPClient: l,
					Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""), AppID: "clicks"})
			}
			directThenProxied(t, tp, up, tc.errCase, "*types.ResourceNotFoundException",
				func(endpoint string, l *answerLog) error { return tc.call(client(endpoint, l)) }, "kinesis",
				pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKinesis, Topic: missing}, "clicks")
		})
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestSNSMissingTopicErrorReported: Publish and PublishBatch to a topic ARN fauxqs does not have.
// aws-sdk-go-v2 (Query protocol) reads NotFound through the proxy exactly as straight from the
// emulator, and the proxy reports the refused send on the topic's produce edge. (fauxqs refuses
// a Publish by TargetArn with InvalidParameter "TopicArn is required", so that form is not here.)
func TestSNSMissingTopicErrorReported(t *testing.T) {
	up := snsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client := func(endpoint string, l *answerLog) *sns.Client {
		o := sns.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(endpoint),
			Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""), AppID: "publisher"}
		if l != nil {
			o.HTTPClient = l
		}
		return sns.New(o)
	}
	// The ARN of a topic that does not exist, in the emulator's own form.
	topic, err := client(tp.url, nil).CreateTopic(ctx, &sns.CreateTopicInput{Name: awssdk.String("present")})
	if err != nil {
		t.Fatalf("CreateTopic through the proxy: %v", err)
	}
	const missing = "absent"
	arn := strings.TrimSuffix(*topic.TopicArn, "present") + missing
	for _, tc := range []struct {
		errCase
		call func(*sns.Client) error
	}{
		{errCase{"Publish", 1}, func(cl *sns.Client) error {
			_, err := cl.Publish(ctx, &sns.PublishInput{TopicArn: &arn, Message: awssdk.String("nowhere")})
			return err
		}},
		{errCase{"PublishBatch", 3}, func(cl *sns.Client) error {
			var entries []snstypes.PublishBatchRequestEntry
			for i := range 3 {
				entries = append(entries, snstypes.PublishBatchRequestEntry{Id: awssdk.String(fmt.Sprint("e", i)), Message: awssdk.String("nowhere")})
			}
			_, err := cl.PublishBatch(ctx, &sns.PublishBatchInput{TopicArn: &arn, PublishBatchRequestEntries: entries})
			return err
		}},
	} {
		t.Run(tc.op, func(t *testing.T) {
			directThenProxied(t, tp, up, tc.errCase, "*types.NotFoundException",
				func(endpoint string, l *answerLog) error { return tc.call(client(endpoint, l)) }, "sns",
				pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSNS, Topic: missing}, "publisher")
		})
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// directThenProxied makes the same failing call straight to the emulator, then through the proxy,
// and checks that the client read the same error and the proxy reported it.
func directThenProxied(t *testing.T, tp *testProxy, up *verifier, ec errCase, errType string,
	call func(endpoint string, l *answerLog) error, protocol string, edge pathway.Edge, service string) {
	t.Helper()
	directLog, proxyLog := &answerLog{}, &answerLog{}
	directErr := call(up.URL(), directLog)
	n, before := tp.ev.len(), up.count()
	proxyErr := call(tp.url, proxyLog)
	checkErrorPassedAndReported(t, ec, errType, directErr, proxyErr, directLog.all(), proxyLog.all(),
		up.count()-before, tp.ev.since(n), protocol, edge, service)
}

// TestKinesisCBORErrorNamed: PutRecord and PutRecords as a Java SDK sends them (CBOR) to a stream
// kinesis-local does not have. Its CBOR error answer names the error in the body only (`__type`,
// `message`), as a Java SDK reads it: the refusal is tracked under that name and with that
// message, as the same refusal of a JSON client is, not as a nameless 400.
func TestKinesisCBORErrorNamed(t *testing.T) {
	tp, up, _, _ := kinesisSetup(t, "present", nil)
	const missing = "absent"
	out := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKinesis, Topic: missing}
	for _, tc := range []struct {
		op       string
		req      map[string]any
		messages int
	}{
		{"PutRecord", map[string]any{"StreamName": missing, "Data": []byte(`{"n":1}`), "PartitionKey": "p1"}, 1},
		{"PutRecords", map[string]any{"StreamName": missing, "Records": []any{
			map[string]any{"Data": []byte(`{"n":2}`), "PartitionKey": "p2"},
			map[string]any{"Data": []byte{0xff, 0x00}, "PartitionKey": "p3"},
		}}, 2},
	} {
		n := len(tp.ev.all())
		st, _, resp := do(t, cborRequest(t, tp.url, tc.op, cborEnc(nil, tc.req, false), testSecret))
		v, err := cborDecode([]byte(resp))
		m, _ := v.(map[string]any)
		if st != 400 || err != nil || m["__type"] == nil {
			t.Fatalf("%s to a missing stream: %d %v %q; want kinesis-local's CBOR error", tc.op, st, err, resp)
		}
		msg, _ := m["message"].(string)
		var broker, lost []errtrack.Event
		for _, e := range tp.ev.all()[n:] {
			switch e.Category {
			case errtrack.BrokerError:
				broker = append(broker, e)
			case errtrack.LostMessage:
				lost = append(lost, e)
			}
		}
		for _, evs := range [][]errtrack.Event{broker, lost} {
			if len(evs) != 1 || evs[0].Name != "ResourceNotFoundException" || !strings.Contains(evs[0].Message, msg) || msg == "" ||
				evs[0].Edge != out || evs[0].Messages != tc.messages || evs[0].Operation != tc.op {
				t.Errorf("%s: events %+v; want ResourceNotFoundException with message %q on %v, %d messages", tc.op, evs, msg, out, tc.messages)
			}
		}
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestKinesisStreamCallErrorsOnStreamEdge: a consumer's GetShardIterator and a DescribeStream for a
// stream kinesis-local does not have, from aws-sdk-go-v2 (JSON) and as a Java SDK sends them
// (CBOR). Each refusal is tracked on the stream's edge: `direction:in` for the consumer's
// GetShardIterator, no direction for DescribeStream, as SQS's queue calls are; not on an edge
// without a stream, where /errors cannot tell which stream is missing.
func TestKinesisStreamCallErrorsOnStreamEdge(t *testing.T) {
	tp, up, kc, ctx := kinesisSetup(t, "present", nil)
	const missing = "absent"
	in := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKinesis, Topic: missing}
	managed := pathway.Edge{Type: pathway.TypeKinesis, Topic: missing}
	check := func(what string, n int, want pathway.Edge) {
		t.Helper()
		evs := tp.ev.all()[n:]
		if len(evs) != 1 || evs[0].Name != "ResourceNotFoundException" || evs[0].Category != errtrack.BrokerError ||
			evs[0].Edge != want || evs[0].Messages != 0 {
			t.Errorf("%s: events %+v; want one ResourceNotFoundException broker_error on %v", what, evs, want)
		}
	}

	n := len(tp.ev.all())
	_, err := kc.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{StreamName: awssdk.String(missing),
		ShardId: awssdk.String("shardId-000000000000"), ShardIteratorType: ktypes.ShardIteratorTypeTrimHorizon})
	var nf *ktypes.ResourceNotFoundException
	if !errors.As(err, &nf) {
		t.Fatalf("GetShardIterator of a missing stream: %v, want ResourceNotFoundException", err)
	}
	check("JSON GetShardIterator", n, in)

	n = len(tp.ev.all())
	if _, err := kc.DescribeStream(ctx, &kinesis.DescribeStreamInput{StreamName: awssdk.String(missing)}); !errors.As(err, &nf) {
		t.Fatalf("DescribeStream of a missing stream: %v, want ResourceNotFoundException", err)
	}
	check("JSON DescribeStream", n, managed)

	n = len(tp.ev.all())
	arn := "arn:aws:kinesis:us-east-1:000000000000:stream/" + missing
	if st, _, _ := do(t, cborRequest(t, tp.url, "GetShardIterator", cborEnc(nil, map[string]any{"StreamARN": arn,
		"ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"}, false), testSecret)); st != 400 {
		t.Fatalf("CBOR GetShardIterator of a missing stream: status %d, want 400", st)
	}
	check("CBOR GetShardIterator", n, in)

	n = len(tp.ev.all())
	if st, _, _ := do(t, cborRequest(t, tp.url, "DescribeStream", cborEnc(nil, map[string]any{"StreamName": missing}, false), testSecret)); st != 400 {
		t.Fatalf("CBOR DescribeStream of a missing stream: status %d, want 400", st)
	}
	check("CBOR DescribeStream", n, managed)
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestSNSTopicCallErrorsOnTopicEdge: GetTopicAttributes and Subscribe for a topic fauxqs does not
// have, from aws-sdk-go-v2. The refusals are tracked on the topic's edge with no direction, as
// SQS's queue calls and Kinesis's stream calls are, not on an edge without a topic, where
// /errors could not tell which topic is missing.
func TestSNSTopicCallErrorsOnTopicEdge(t *testing.T) {
	up := snsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := sns.New(sns.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url),
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""), AppID: "admin"})
	topic, err := cl.CreateTopic(ctx, &sns.CreateTopicInput{Name: awssdk.String("present")})
	if err != nil {
		t.Fatalf("CreateTopic through the proxy: %v", err)
	}
	arn := strings.TrimSuffix(*topic.TopicArn, "present") + "absent"
	want := pathway.Edge{Type: pathway.TypeSNS, Topic: "absent"}
	for _, tc := range []struct {
		op   string
		call func() error
	}{
		{"GetTopicAttributes", func() error {
			_, err := cl.GetTopicAttributes(ctx, &sns.GetTopicAttributesInput{TopicArn: &arn})
			return err
		}},
		{"Subscribe", func() error {
			_, err := cl.Subscribe(ctx, &sns.SubscribeInput{TopicArn: &arn, Protocol: awssdk.String("sqs"),
				Endpoint: awssdk.String("arn:aws:sqs:us-east-1:000000000000:somewhere")})
			return err
		}},
	} {
		n := len(tp.ev.all())
		var nf *snstypes.NotFoundException
		if err := tc.call(); !errors.As(err, &nf) {
			t.Fatalf("%s of a missing topic: %v, want NotFoundException", tc.op, err)
		}
		evs := tp.ev.all()[n:]
		if len(evs) != 1 || evs[0].Operation != tc.op || evs[0].Category != errtrack.BrokerError || evs[0].Name != "NotFound" || evs[0].Edge != want {
			t.Errorf("%s: events %+v; want one NotFound broker_error on %v", tc.op, evs, want)
		}
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestServiceRefusalLoggedWithClient: the tracked error says why (code, message) and on which
// edge, but not which client: on a shared front every unnamed client is dsmproxy-client. At
// Debug, each answer with an error gets a line naming its client (SNS Publish to a topic fauxqs
// does not have, Kinesis PutRecord to a stream kinesis-local does not have).
func TestServiceRefusalLoggedWithClient(t *testing.T) {
	cases := []struct {
		name string
		peer func(testing.TB) *verifier
		send func(ctx context.Context, url string) error
		want []string
	}{
		{"sns", snsPeer, func(ctx context.Context, url string) error {
			_, err := snsClient(url, "").Publish(ctx, &sns.PublishInput{TopicArn: awssdk.String("arn:aws:sns:us-east-1:000000000000:no-such-topic"), Message: awssdk.String("m")})
			return err
		}, []string{`"service":"sns"`, `"op":"Publish"`, `"topic":"no-such-topic"`, `"code":"NotFound"`, `"status":404`}},
		{"kinesis", kinesisPeer, func(ctx context.Context, url string) error {
			_, err := kinesisClient(url).PutRecord(ctx, &kinesis.PutRecordInput{StreamName: awssdk.String("no-such-stream"), PartitionKey: awssdk.String("k"), Data: []byte("{}")})
			return err
		}, []string{`"service":"kinesis"`, `"op":"PutRecord"`, `"topic":"no-such-stream"`, `"code":"ResourceNotFoundException"`, `"status":400`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := tc.peer(t)
			var logs syncbuf.Buffer
			tp := startProxy(t, func(c *Config) { c.Upstream, c.Log = up.URL(), zerolog.New(&logs).Level(zerolog.DebugLevel) })
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := tc.send(ctx, tp.url); err == nil {
				t.Fatal("the send succeeded; want the service's refusal")
			}
			// Logged before the answer is written.
			var line string
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, "the service refused the request") {
					line = l
				}
			}
			if line == "" {
				t.Fatalf("no line for the refused request; log:\n%s", logs.String())
			}
			for _, w := range append(tc.want, `"client":"127.0.0.1:`) {
				if !strings.Contains(line, w) {
					t.Errorf("the refusal's line lacks %s: %s", w, line)
				}
			}
		})
	}
}
