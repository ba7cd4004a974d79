package aws

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/aws/smithy-go"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

func sqsClient(endpoint, key, secret string) *sqs.Client {
	return sqs.New(sqs.Options{
		Region:       "us-east-1",
		BaseEndpoint: awssdk.String(endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(key, secret, ""),
		AppID:        "orders-api",
	})
}

func strAttr(v string) types.MessageAttributeValue {
	return types.MessageAttributeValue{DataType: awssdk.String("String"), StringValue: awssdk.String(v)}
}

// sdkAttrs converts SDK attributes to ours, to recompute the MD5 the way Java clients do.
func sdkAttrs(m map[string]types.MessageAttributeValue) []attr {
	var out []attr
	for k, v := range m {
		out = append(out, attr{Name: k, DataType: awssdk.ToString(v.DataType), String: v.StringValue, Binary: v.BinaryValue})
	}
	return out
}

func TestSQSJSONThroughProxy(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := sqsClient(tp.url, testKey, testSecret)

	cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("orders")})
	if err != nil {
		t.Fatalf("CreateQueue through proxy: %v", err)
	}
	qurl := awssdk.ToString(cq.QueueUrl)
	if u, _ := url.Parse(qurl); u == nil || u.Host != tp.Addr().String() {
		t.Fatalf("CreateQueue QueueUrl %q does not point at the proxy %s", qurl, tp.Addr())
	}
	gq, err := cl.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: awssdk.String("orders")})
	if err != nil || awssdk.ToString(gq.QueueUrl) != qurl {
		t.Fatalf("GetQueueUrl = %v, %v; want %s", gq, err, qurl)
	}
	lq, err := cl.ListQueues(ctx, &sqs.ListQueuesInput{})
	if err != nil || len(lq.QueueUrls) == 0 {
		t.Fatalf("ListQueues: %v %v", lq, err)
	}
	for _, u := range lq.QueueUrls {
		if !strings.HasPrefix(u, tp.url+"/") {
			t.Errorf("ListQueues URL %q does not point at the proxy", u)
		}
	}

	// single send with an attribute: body checksum validated by the SDK, attribute MD5 by us
	userAttrs := map[string]types.MessageAttributeValue{"tenant": strAttr("acme")}
	sm, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: awssdk.String("order 1\r\n"), MessageAttributes: userAttrs})
	if err != nil {
		t.Fatalf("SendMessage: %v", err)
	}
	if got, want := awssdk.ToString(sm.MD5OfMessageAttributes), attributesMD5(sdkAttrs(userAttrs)); got != want {
		t.Errorf("SendMessage MD5OfMessageAttributes = %q, want the client's own %q", got, want)
	}
	// no attributes: the field must be absent, as SQS would have answered
	sm2, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: awssdk.String("order 2")})
	if err != nil {
		t.Fatalf("SendMessage without attributes: %v", err)
	}
	if sm2.MD5OfMessageAttributes != nil {
		t.Errorf("MD5OfMessageAttributes = %q for a message sent without attributes", *sm2.MD5OfMessageAttributes)
	}
	// batch: one plain, one with 10 attributes (injection skipped), one with a Number attribute
	ten := map[string]types.MessageAttributeValue{}
	for i := 0; i < 10; i++ {
		ten[fmt.Sprintf("a%d", i)] = strAttr("v")
	}
	num := map[string]types.MessageAttributeValue{"n": {DataType: awssdk.String("Number"), StringValue: awssdk.String("42")}}
	bm, err := cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &qurl, Entries: []types.SendMessageBatchRequestEntry{
		{Id: awssdk.String("plain"), MessageBody: awssdk.String("order 3")},
		{Id: awssdk.String("ten"), MessageBody: awssdk.String("order 4"), MessageAttributes: ten},
		{Id: awssdk.String("num"), MessageBody: awssdk.String("order 5"), MessageAttributes: num},
	}})
	if err != nil {
		t.Fatalf("SendMessageBatch: %v", err)
	}
	if len(bm.Successful) != 3 || len(bm.Failed) != 0 {
		t.Fatalf("batch: %d ok, %d failed: %+v", len(bm.Successful), len(bm.Failed), bm.Failed)
	}
	wantMD5 := map[string]string{"plain": "", "ten": attributesMD5(sdkAttrs(ten)), "num": attributesMD5(sdkAttrs(num))}
	for _, e := range bm.Successful {
		if got := awssdk.ToString(e.MD5OfMessageAttributes); got != wantMD5[*e.Id] {
			t.Errorf("batch entry %s MD5OfMessageAttributes = %q, want %q", *e.Id, got, wantMD5[*e.Id])
		}
	}
	if n := len(tp.ev.named("attribute_limit")); n != 1 {
		t.Errorf("attribute_limit skip events = %d, want 1", n)
	}

	// receive asking for one attribute by name: exactly that attribute, MD5 over it
	got := receiveAll(ctx, t, cl, qurl, 5, []string{"tenant", "n"})
	for _, m := range got {
		if _, ok := m.MessageAttributes[ddAttr]; ok {
			t.Errorf("message %q: _datadog returned though the client did not ask for it", *m.Body)
		}
		for k := range m.MessageAttributes {
			if k != "tenant" && k != "n" {
				t.Errorf("message %q: attribute %q not asked for", *m.Body, k)
			}
		}
		want := attributesMD5(sdkAttrs(m.MessageAttributes))
		if awssdk.ToString(m.MD5OfMessageAttributes) != want {
			t.Errorf("message %q: MD5OfMessageAttributes %q, want %q over %v", *m.Body, awssdk.ToString(m.MD5OfMessageAttributes), want, m.MessageAttributes)
		}
		if *m.Body == "order 1\r\n" && len(m.MessageAttributes) != 1 {
			t.Errorf("order 1 attributes = %v", m.MessageAttributes)
		}
		if *m.Body == "order 2" && (m.MessageAttributes != nil || m.MD5OfMessageAttributes != nil) {
			t.Errorf("order 2 has attributes %v / MD5 %v after stripping _datadog", m.MessageAttributes, m.MD5OfMessageAttributes)
		}
	}

	// checkpoints chain: every consume whose message was injected has a produce as parent
	prod := tp.rec.withTags("direction:out", "topic:orders", "type:sqs")
	cons := tp.rec.withTags("direction:in", "topic:orders", "type:sqs")
	if len(prod) != 5 || len(cons) != 5 {
		t.Fatalf("points: %d produce, %d consume; want 5 and 5", len(prod), len(cons))
	}
	hashes := map[uint64]bool{}
	for _, p := range prod {
		hashes[p.Hash] = true
		if p.Service != "orders-api" {
			t.Errorf("produce service %q, want the SDK app id orders-api", p.Service)
		}
	}
	chained, fresh := 0, 0
	for _, c := range cons {
		switch {
		case hashes[c.ParentHash]:
			chained++
		case c.ParentHash == 0:
			fresh++
		}
	}
	if chained != 4 || fresh != 1 {
		t.Errorf("consume parents: %d chained to produces, %d fresh; want 4 and 1 (the 10-attribute message)", chained, fresh)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream saw requests without the proxy's valid signature: %v", bad)
	}
}

func receiveAll(ctx context.Context, t *testing.T, cl *sqs.Client, qurl string, want int, names []string) []types.Message {
	t.Helper()
	var got []types.Message
	for len(got) < want {
		if ctx.Err() != nil {
			t.Fatalf("received %d of %d messages before the deadline", len(got), want)
		}
		rm, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &qurl, MaxNumberOfMessages: 10, MessageAttributeNames: names, WaitTimeSeconds: 1})
		if err != nil {
			t.Fatalf("ReceiveMessage: %v", err)
		}
		got = append(got, rm.Messages...)
	}
	return got
}

func TestSQSReceiveAllKeepsDatadog(t *testing.T) {
	tp, _, cl, qurl, ctx := sqsSetup(t, "all", nil)
	cq := &sqs.CreateQueueOutput{QueueUrl: &qurl}
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: cq.QueueUrl, MessageBody: awssdk.String("x")}); err != nil {
		t.Fatal(err)
	}
	got := receiveAll(ctx, t, cl, *cq.QueueUrl, 1, []string{"All"})
	dd, ok := got[0].MessageAttributes[ddAttr]
	if !ok {
		t.Fatalf("All did not return _datadog: %v", got[0].MessageAttributes)
	}
	c := contextFromCarrier([]byte(awssdk.ToString(dd.StringValue)))
	prod := tp.rec.withTags("direction:out", "topic:all")
	if len(prod) != 1 || c.Hash != prod[0].Hash {
		t.Fatalf("_datadog carries hash %d; produce points %+v", c.Hash, prod)
	}
	if awssdk.ToString(got[0].MD5OfMessageAttributes) != attributesMD5(sdkAttrs(got[0].MessageAttributes)) {
		t.Errorf("MD5 with All does not match the returned attributes")
	}
}

func TestSQSAuthRefused(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// a client key listed in config is accepted
	if _, err := sqsClient(tp.url, otherKey, otherSec).CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("auth")}); err != nil {
		t.Fatalf("configured client key refused: %v", err)
	}
	before := up.count()
	cases := []struct {
		key, secret, code string
	}{
		{testKey, "wrong-secret", "SignatureDoesNotMatch"},
		{"AKIDUNKNOWN000000000", "whatever", "InvalidClientTokenId"},
		{otherKey, testSecret, "SignatureDoesNotMatch"},
	}
	for _, tc := range cases {
		_, err := sqsClient(tp.url, tc.key, tc.secret).ListQueues(ctx, &sqs.ListQueuesInput{})
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != tc.code {
			t.Errorf("key %s: error %v, want API error %s", tc.key, err, tc.code)
		}
	}
	// unsigned
	resp, err := httpPost(tp.url+"/", "application/x-amz-json-1.0", map[string]string{"X-Amz-Target": "AmazonSQS.ListQueues"}, "{}")
	if err != nil {
		t.Fatal(err)
	}
	if resp.status != 403 || !strings.Contains(resp.body, "MissingAuthenticationToken") || resp.header.Get("X-Amzn-Query-Error") == "" {
		t.Errorf("unsigned request: %d %s", resp.status, resp.body)
	}
	if up.count() != before {
		t.Errorf("refused requests reached upstream: %d requests, had %d", up.count(), before)
	}
	if tp.Stats().AuthFailures != 4 {
		t.Errorf("AuthFailures = %d, want 4", tp.Stats().AuthFailures)
	}
}

func TestSQSUpstreamErrorPassedThrough(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl := sqsClient(tp.url, testKey, testSecret)
	_, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: awssdk.String(tp.url + "/123456789012/missing"), MessageBody: awssdk.String("x")})
	var qdne *types.QueueDoesNotExist
	if !errors.As(err, &qdne) {
		t.Fatalf("send to a missing queue: %v, want *types.QueueDoesNotExist", err)
	}
	var broker []errtrack.Event
	for _, e := range tp.ev.named("AWS.SimpleQueueService.NonExistentQueue") {
		if e.Category == errtrack.BrokerError {
			broker = append(broker, e)
		}
	}
	if len(broker) != 1 || broker[0].Operation != "SendMessage" || broker[0].Protocol != "sqs" || broker[0].Edge.Direction != pathway.Out {
		t.Fatalf("broker error events %+v (all: %+v)", broker, tp.ev.ev)
	}
}
