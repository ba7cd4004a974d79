package aws

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
)

// signedQuery posts an SQS Query form to u, signed as a Query client signs it.
func signedQuery(t *testing.T, ctx context.Context, u string, form url.Values) (int, string) {
	t.Helper()
	body := form.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	creds := awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret}
	if err := signer().SignHTTP(ctx, creds, req, sha256Hex([]byte(body)), "sqs", "us-east-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	st, _, resp := do(t, req)
	return st, resp
}

// TestQueryReceiveUndecodableAnswerTracked: local-aws-sqs writes a Query body holding `<&>`
// into its ReceiveMessage XML unescaped. The proxy cannot read that answer, so the message gets
// no consume checkpoint: that must show as a tracked decode error on the queue's edge, not only
// as a /stats counter (found walking the README: `/errors` and `/dsm` showed nothing).
func TestQueryReceiveUndecodableAnswerTracked(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v := func(kv ...string) url.Values {
		f := url.Values{"Version": {"2012-11-05"}}
		for i := 0; i < len(kv); i += 2 {
			f.Set(kv[i], kv[i+1])
		}
		return f
	}
	if st, resp := signedQuery(t, ctx, tp.url+"/", v("Action", "CreateQueue", "QueueName", "badxml")); st != 200 {
		t.Fatalf("CreateQueue: %d %s", st, resp)
	}
	q := tp.url + "/123456789012/badxml"
	if st, resp := signedQuery(t, ctx, tp.url+"/", v("Action", "SendMessage", "QueueUrl", q, "MessageBody", "a <&> b")); st != 200 {
		t.Fatalf("SendMessage: %d %s", st, resp)
	}
	st, resp := signedQuery(t, ctx, tp.url+"/", v("Action", "ReceiveMessage", "QueueUrl", q))
	if st != 200 || !strings.Contains(resp, "<Body>a <&> b</Body>") {
		t.Fatalf("ReceiveMessage: %d %s; want the emulator's unescaped body passed through", st, resp)
	}
	checkOneAnswerDecode(t, tp, "sqs", "ReceiveMessage", "badxml")
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream check: %v", bad)
	}
}

// TestSNSPublishBatchUndecodableAnswerTracked: fauxqs echoes a PublishBatch entry's Id into its
// XML answer unescaped (`<Id>a<b&c</Id>`; SNS itself refuses such an Id). The proxy cannot read
// that answer, so the published message gets no produce checkpoint: as for a ReceiveMessage
// answer, that must show as a tracked decode error on the topic's edge, not vanish.
func TestSNSPublishBatchUndecodableAnswerTracked(t *testing.T) {
	up := snsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sn := snsClient(tp.url, "")
	topic, err := sn.CreateTopic(ctx, &sns.CreateTopicInput{Name: awssdk.String("badxml-topic")})
	if err != nil {
		t.Fatalf("CreateTopic: %v", err)
	}
	// The SDK cannot read the answer either: its error is expected, the proxy's tracking is the test.
	sn.PublishBatch(ctx, &sns.PublishBatchInput{TopicArn: topic.TopicArn, PublishBatchRequestEntries: []snstypes.PublishBatchRequestEntry{
		{Id: awssdk.String("a<b&c"), Message: awssdk.String("m1")},
	}})
	checkOneAnswerDecode(t, tp, "sns", "PublishBatch", "badxml-topic")
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream check: %v", bad)
	}
}

// checkOneAnswerDecode: the proxy counted one answer it could not read, and tracked it as a
// decode error of service's op on topic's edge.
func checkOneAnswerDecode(t *testing.T, tp *testProxy, service, op, topic string) {
	t.Helper()
	if n := tp.Stats().DecodeErrors; n != 1 {
		t.Errorf("DecodeErrors %d, want 1", n)
	}
	var got []errtrack.Event
	for _, ev := range tp.ev.all() {
		if ev.Category == errtrack.DecodeError {
			got = append(got, ev)
		}
	}
	if len(got) != 1 || got[0].Operation != op || got[0].Edge.Topic != topic || got[0].Protocol != service {
		t.Fatalf("decode error events %+v; want one for %s on %s", got, op, topic)
	}
}
