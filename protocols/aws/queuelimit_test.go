package aws

import (
	"context"
	"maps"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestSQSQueueOwnSizeLimit: a queue whose MaximumMessageSize (1 KiB here) is below the proxy's
// limit takes a message that fits only without `_datadog`. Through the proxy the send still
// succeeds, in both wire forms: the refused rewrite is sent again without `_datadog` (and with
// the queue URL still translated for the upstream), and later such messages to that queue go
// without it at once. Messages that fit with it still get it (batches: TestSQSBatchEntriesSentAgain).
func TestSQSQueueOwnSizeLimit(t *testing.T) {
	tp, up, cl, _, ctx := sqsSetup(t, "own-limit-base", nil)
	small := func(name string) string { return smallQueue(ctx, t, cl, name, nil) }
	near := strings.Repeat("n", 1000) // fits 1024 alone, not with _datadog
	qurl := small("own-limit")
	for i := range 3 {
		if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: &near}); err != nil {
			t.Fatalf("send %d of a message that fits its queue: %v", i, err)
		}
	}
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: awssdk.String("short")}); err != nil {
		t.Fatal(err)
	}
	if st := tp.Stats(); st.SentAgain != 1 {
		t.Errorf("%d sends refused and sent again, want 1: the second and third should not have been tried with _datadog", st.SentAgain)
	}
	if n := len(tp.ev.named("queue_size_limit")); n != 3 {
		t.Errorf("%d queue_size_limit skips, want 3", n)
	}
	checkUpstreamURLs(t, tp, up)
	got := receiveAll(ctx, t, cl, qurl, 4, []string{"All"})
	if len(got) != 4 {
		t.Errorf("%d messages stored, want 4", len(got))
	}
	carried := 0
	for _, m := range got {
		if _, ok := m.MessageAttributes[ddAttr]; ok {
			carried++
			if awssdk.ToString(m.Body) != "short" {
				t.Errorf("a message of %d bytes carries _datadog into a 1024-byte queue", len(awssdk.ToString(m.Body)))
			}
		}
	}
	if carried != 1 {
		t.Errorf("%d of 4 messages carry _datadog, want 1 (the short one)", carried)
	}
	if n := len(tp.rec.withTags("direction:out", "topic:own-limit")); n != 4 {
		t.Errorf("%d produce checkpoints, want 4", n)
	}
	if st := tp.Stats(); st.Injected != 1 || st.UpstreamErrors != 0 {
		t.Errorf("stats %+v: want 1 injected and no upstream error reaching the client", st)
	}

	// A message over the queue's limit on its own is refused as it would be directly, and is not
	// sent twice.
	before := tp.Stats()
	tooBig := strings.Repeat("b", 2000)
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: &tooBig}); err == nil || !strings.Contains(err.Error(), "Message must be shorter than 1024 bytes") {
		t.Errorf("a 2000-byte message to a 1024-byte queue: %v, want SQS's refusal", err)
	}
	if st := tp.Stats(); st.SentAgain != before.SentAgain || st.Injected != before.Injected {
		t.Errorf("after a message too big on its own: %d sent again, %d injected; want %d, %d", st.SentAgain, st.Injected, before.SentAgain, before.Injected)
	}
	fresh := small("own-limit-fresh") // the same before its limit is known: tried with _datadog, then as sent
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &fresh, MessageBody: &tooBig}); err == nil {
		t.Error("a 2000-byte message to a fresh 1024-byte queue was taken")
	}
	if st := tp.Stats(); st.Injected != before.Injected {
		t.Errorf("%d injected after a refused message, want %d", st.Injected, before.Injected)
	}
	for _, ev := range tp.ev.all() {
		if ev.Edge.Topic == "own-limit-fresh" && ev.Category != errtrack.ProxySkip && ev.Messages != 1 {
			t.Errorf("the refused message reported as %d messages (%s %s), want 1", ev.Messages, ev.Category, ev.Name)
		}
	}

	// A message the proxy counts smaller than the queue does (the emulator counts a Binary value
	// as its base64 text): the send again carries no _datadog whatever the proxy's count says.
	binQ := small("own-limit-binary")
	again := tp.Stats().SentAgain
	for i := range 2 {
		if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &binQ, MessageBody: awssdk.String(strings.Repeat("b", 180)),
			MessageAttributes: map[string]types.MessageAttributeValue{"blob": binAttr(make([]byte, 600))}}); err != nil {
			t.Fatalf("send %d of a message that fits its queue by the queue's count: %v", i, err)
		}
	}
	if got := tp.Stats().SentAgain - again; got != 2 {
		t.Errorf("%d sent again, want 2 (the proxy's count lets each be tried with _datadog)", got)
	}
	for _, m := range receiveAll(ctx, t, cl, binQ, 2, []string{"All"}) {
		if _, ok := m.MessageAttributes[ddAttr]; ok {
			t.Error("a message stored with _datadog in a queue that refused it")
		}
	}

	// The Query form (Debian's awscli), on a queue of its own.
	aws := newCLI(t, tp.url)
	qq := small("own-limit-query")
	for range 2 {
		var out struct{ MessageId string }
		aws.run(ctx, &out, "sqs", "send-message", "--queue-url", qq, "--message-body", near)
		if out.MessageId == "" {
			t.Fatal("Query send-message answered no MessageId")
		}
	}
	if st := tp.Stats(); st.SentAgain != 5 {
		t.Errorf("after the Query sends: %d sent again, want 5 (the fresh queue's, the binary queue's two, and the Query queue's first)", st.SentAgain)
	}
	checkUpstreamURLs(t, tp, up)
	for _, m := range receiveAll(ctx, t, cl, qq, 2, []string{"All"}) {
		if _, ok := m.MessageAttributes[ddAttr]; ok || len(awssdk.ToString(m.Body)) != len(near) {
			t.Errorf("Query send stored as %d bytes, _datadog %v; want %d bytes without it", len(awssdk.ToString(m.Body)), ok, len(near))
		}
	}

}

// TestSQSQueueLimitTriedAgain: a queue's learned limit is tried again after queueLimitTTL, so a
// queue whose limit was raised gets `_datadog` again; one whose limit stayed costs one more
// refused request, which the client does not see.
func TestSQSQueueLimitTriedAgain(t *testing.T) {
	var ahead atomic.Int64
	tp, _, cl, _, ctx := sqsSetup(t, "tried-again-base", func(c *Config) {
		c.Clock = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
		c.MaxClockSkew = 3 * queueLimitTTL // the clients sign with the real time
	})
	qurl := smallQueue(ctx, t, cl, "tried-again", nil)
	near := strings.Repeat("n", 1000)
	for i, tc := range []struct {
		ahead time.Duration
		again uint64 // SentAgain after the send
	}{{0, 1}, {queueLimitTTL / 2, 1}, {queueLimitTTL + time.Minute, 2}} {
		ahead.Store(int64(tc.ahead))
		if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: &near}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		if got := tp.Stats().SentAgain; got != tc.again {
			t.Errorf("send %d, %v ahead: %d sent again, want %d", i, tc.ahead, got, tc.again)
		}
	}
}

// smallQueue creates queue name, with attrs, through cl with a MaximumMessageSize of 1 KiB, and
// returns its URL.
func smallQueue(ctx context.Context, t *testing.T, cl *sqs.Client, name string, attrs map[string]string) string {
	t.Helper()
	a := map[string]string{"MaximumMessageSize": "1024"}
	maps.Copy(a, attrs)
	cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(name), Attributes: a})
	if err != nil {
		t.Fatalf("CreateQueue %s: %v", name, err)
	}
	return *cq.QueueUrl
}

// checkUpstreamURLs fails if a request reached the upstream naming a queue by the URL the proxy
// handed out (as JSON writes it, or form-encoded).
func checkUpstreamURLs(t *testing.T, tp *testProxy, up *verifier) {
	t.Helper()
	host := strings.TrimPrefix(tp.url, "http://")
	bodies, _ := up.seen()
	for _, b := range bodies {
		if strings.Contains(b, "own-limit") && (strings.Contains(b, host) || strings.Contains(b, url.QueryEscape(host))) {
			t.Errorf("a request reached the upstream with the proxy's queue URL: %.200s", b)
		}
	}
}

// TestQueueLimitKeepsLower: of two limits learned for one key within queueLimitTTL the lower
// stays (two queues of one name behind one Host share it instead of taking turns); a raised one
// is taken once the old has expired.
func TestQueueLimitKeepsLower(t *testing.T) {
	q := newQueueLimits()
	t0 := time.Unix(1700000000, 0)
	c := &call{r: httptest.NewRequest("POST", "http://sqs.local/", nil), service: ServiceSQS,
		edge: pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSQS, Topic: "orders"}}
	for _, st := range []struct {
		at   time.Duration
		n    int
		want int
	}{{0, 2048, 2048}, {time.Minute, 1024, 1024}, {2 * time.Minute, 4096, 1024}, {queueLimitTTL + 2*time.Minute, 4096, 4096}} {
		c.now = t0.Add(st.at)
		if !q.noteRefusal(c, "InvalidParameterValue", "One or more parameters are invalid. Reason: Message must be shorter than "+strconv.Itoa(st.n)+" bytes.") {
			t.Fatal("the refusal was not read")
		}
		if got := q.learned(c, c.edge); got != st.want {
			t.Errorf("after %d at +%v: limit %d, want %d", st.n, st.at, got, st.want)
		}
	}
}
