package aws

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
)

// TestSQSSizeLimits: a message or batch that _datadog would push over the size limit is sent
// unmodified, succeeds, and its consumer starts a new pathway.
func TestSQSSizeLimits(t *testing.T) {
	tp, _, cl, qurl, ctx := sqsSetup(t, "big", nil)
	cq := &sqs.CreateQueueOutput{QueueUrl: &qurl}
	big := strings.Repeat("x", DefaultMaxMessageBytes-10)
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: cq.QueueUrl, MessageBody: &big}); err != nil {
		t.Fatalf("near-limit SendMessage: %v", err)
	}
	if n := len(tp.ev.named("size_limit")); n != 1 {
		t.Errorf("size_limit events %d, want 1", n)
	}
	// 60 bytes of headroom: less than one _datadog attribute (about 70)
	half := strings.Repeat("y", DefaultMaxMessageBytes/2-30)
	bm, err := cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: cq.QueueUrl, Entries: []types.SendMessageBatchRequestEntry{
		{Id: awssdk.String("h1"), MessageBody: &half}, {Id: awssdk.String("h2"), MessageBody: &half},
	}})
	if err != nil || len(bm.Successful) != 2 {
		t.Fatalf("near-limit batch: %v %+v", err, bm)
	}
	if n := len(tp.ev.named("batch_size_limit")); n != 2 {
		t.Errorf("batch_size_limit events %d, want 2", n)
	}
	got := receiveAll(ctx, t, cl, *cq.QueueUrl, 3, []string{"All"})
	for _, m := range got {
		if _, ok := m.MessageAttributes[ddAttr]; ok {
			t.Errorf("a message over the limit carries _datadog")
		}
	}
	for _, c := range tp.rec.withTags("direction:in", "topic:big") {
		if c.ParentHash != 0 {
			t.Errorf("consume of an uninjected message has parent %d", c.ParentHash)
		}
	}
	if tp.Stats().Injected != 0 || tp.Stats().Skipped != 3 {
		t.Errorf("stats %+v", tp.Stats())
	}
}

// TestSQSFailedBatchEntry: a batch entry SQS refuses is passed through and reported; the good
// entry still gets its checkpoint.
func TestSQSFailedBatchEntry(t *testing.T) {
	tp, _, cl, qurl, ctx := sqsSetup(t, "partial", nil)
	cq := &sqs.CreateQueueOutput{QueueUrl: &qurl}
	bm, err := cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: cq.QueueUrl, Entries: []types.SendMessageBatchRequestEntry{
		{Id: awssdk.String("ok"), MessageBody: awssdk.String("fine")},
		{Id: awssdk.String("bad"), MessageBody: awssdk.String("x"), MessageAttributes: map[string]types.MessageAttributeValue{"AWS.reserved": strAttr("v")}},
	}})
	if err != nil {
		t.Fatalf("batch: %v", err)
	}
	if len(bm.Failed) != 1 || len(bm.Successful) != 1 {
		t.Fatalf("emulator answered %d ok / %d failed; this test needs one of each", len(bm.Successful), len(bm.Failed))
	}
	code := awssdk.ToString(bm.Failed[0].Code)
	if evs := tp.ev.named(code); len(evs) != 1 || evs[0].Operation != "SendMessageBatch" || evs[0].Edge.Topic != "partial" || evs[0].Messages != 1 || evs[0].Category != errtrack.LostMessage {
		t.Errorf("failed entry %s not reported: %+v", code, tp.ev.ev)
	}
	if n := len(tp.rec.withTags("direction:out", "topic:partial")); n != 1 {
		t.Errorf("%d produce checkpoints, want 1 (the successful entry)", n)
	}
}

// TestSQSQueryQueueInPath: Java SDK v1 drops QueueUrl from the form and POSTs to the queue URL's
// path; the proxy forwards the path to the upstream host. local-aws-sqs does not route by path
// (real SQS does), so this asserts what reached upstream and that its error came back unchanged.
func TestSQSQueryQueueInPath(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cq, err := sqsClient(tp.url, testKey, testSecret).CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("pathq")})
	if err != nil {
		t.Fatal(err)
	}
	body := "Action=SendMessage&Version=2012-11-05&MessageBody=from+java+v1"
	req := signedRaw(t, *cq.QueueUrl, "", body, time.Now(), "")
	req.Header.Del("X-Amz-Target")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	creds := awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret}
	req.Header.Del("Authorization")
	if err := signer().SignHTTP(ctx, creds, req, sha256Hex([]byte(body)), "sqs", "us-east-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	st, _, resp := do(t, req)
	up.mu.Lock()
	last := up.paths[len(up.paths)-1]
	up.mu.Unlock()
	if want := "/123456789012/pathq"; last != want {
		t.Errorf("upstream path %q, want the queue path %q", last, want)
	}
	if st != 400 || !strings.Contains(resp, "<Code>AWS.SimpleQueueService.NonExistentQueue</Code>") {
		t.Fatalf("emulator's answer not passed through: %d %s", st, resp)
	}
	// one broker error and, the send being refused for good, one lost message on queue pathq
	evs := tp.ev.named("AWS.SimpleQueueService.NonExistentQueue")
	if len(evs) != 2 || evs[0].Category != errtrack.BrokerError || evs[1].Category != errtrack.LostMessage || evs[1].Edge.Topic != "pathq" {
		t.Errorf("upstream error reported as %+v, want a broker error and a lost message on pathq", evs)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream check: %v", bad)
	}
}

func signer() *v4.Signer { return v4.NewSigner() }

// TestSQSDeadLetterSourceQueueURLs: ListDeadLetterSourceQueues (lower-case queueUrls in JSON)
// answers with URLs that point at the proxy, and they work when sent back.
func TestSQSDeadLetterSourceQueueURLs(t *testing.T) {
	tp, _, cl, dlq, ctx := sqsSetup(t, "dlq", nil)
	qa, err := cl.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: &dlq, AttributeNames: []types.QueueAttributeName{"QueueArn"}})
	if err != nil {
		t.Fatal(err)
	}
	policy := `{"deadLetterTargetArn":"` + qa.Attributes["QueueArn"] + `","maxReceiveCount":"3"}`
	src, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("src"), Attributes: map[string]string{"RedrivePolicy": policy}})
	if err != nil {
		t.Fatalf("CreateQueue with a redrive policy: %v", err)
	}
	ls, err := cl.ListDeadLetterSourceQueues(ctx, &sqs.ListDeadLetterSourceQueuesInput{QueueUrl: &dlq})
	if err != nil {
		t.Fatalf("ListDeadLetterSourceQueues: %v", err)
	}
	if len(ls.QueueUrls) != 1 || ls.QueueUrls[0] != *src.QueueUrl || !strings.HasPrefix(ls.QueueUrls[0], tp.url+"/") {
		t.Fatalf("dead-letter source queues %v, want [%s] under %s", ls.QueueUrls, *src.QueueUrl, tp.url)
	}
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &ls.QueueUrls[0], MessageBody: awssdk.String("via listed URL")}); err != nil {
		t.Fatalf("send to the listed URL: %v", err)
	}
}

// TestAnswerOverMaxAnswerBytes: an answer from the service larger than max_answer_bytes reaches
// the client as a 502 that names the limit, never as a 200 cut short.
func TestAnswerOverMaxAnswerBytes(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL(); c.MaxAnswerBytes = 4 << 10 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	direct := sqsClient(up.URL(), testKey, testSecret)
	cq, err := direct.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("big-answers")})
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Repeat("b", 6<<10)
	if _, err := direct.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: cq.QueueUrl, MessageBody: &body}); err != nil {
		t.Fatal(err)
	}
	qname := "big-answers"
	qurl := tp.url + "/000000000000/" + qname
	if gq, err := sqsClient(tp.url, testKey, testSecret).GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: &qname}); err == nil {
		qurl = awssdk.ToString(gq.QueueUrl)
	}
	// One attempt: the SDK retries a 502, and the retry finds the message in flight (invisible).
	_, err = sqsClient(tp.url, testKey, testSecret).ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &qurl, WaitTimeSeconds: 1},
		func(o *sqs.Options) { o.RetryMaxAttempts = 1 })
	var re *awshttp.ResponseError
	if !errors.As(err, &re) || re.HTTPStatusCode() != http.StatusBadGateway || !strings.Contains(err.Error(), "max_answer_bytes") {
		t.Fatalf("ReceiveMessage of a 6 KiB message with a 4 KiB limit: %v, want a 502 naming max_answer_bytes", err)
	}
}

// TestBodyBufferGrowsWithTheData: a request's Content-Length alone does not allocate the body it
// announces, whatever its size (one of up to 1 MiB took its whole size at once: 300 connections
// that announced 1 MiB and stalled held 310 MB in a soak run, for the 2 minutes of the body
// timeout); a body that does arrive is read whole.
func TestBodyBufferGrowsWithTheData(t *testing.T) {
	for _, announced := range []int64{1 << 20, 16 << 20} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := readBody(strings.NewReader("ten bytes!"), announced, 16<<20)
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Fatal("a body cut short was read")
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 256<<10 {
			t.Errorf("a Content-Length of %d with 10 bytes behind it allocated %d bytes", announced, grew)
		}
	}
	for _, size := range []int{0, 7, 64<<10 + 1, 1 << 20, 3<<20 + 7} {
		body := strings.Repeat("b", size)
		got, err := readBody(strings.NewReader(body), int64(len(body)), 16<<20)
		if err != nil || string(got) != body {
			t.Fatalf("a whole body of %d bytes: %d bytes, %v", size, len(got), err)
		}
	}
}

// TestSlowBodyTimesOut: a client that announces a body and sends it a few bytes at a time (or
// not at all) has its connection closed once the body timeout passes, instead of holding it.
func TestSlowBodyTimesOut(t *testing.T) {
	defer func(d time.Duration) { bodyTimeout = d }(bodyTimeout)
	bodyTimeout = 300 * time.Millisecond
	tp := startProxy(t, nil)
	c, err := net.Dial("tcp", tp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: 1000\r\n\r\n{\"Queue", tp.Addr())
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err = io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("a request whose body never came kept its connection for 30 s")
	}
}

// TestLimitsInQueryAndSNS: the 10-attribute and size limits hold in the Query form (the AWS CLI
// sending to SQS) and for SNS Publish (aws-sdk-go-v2 against fauxqs): each message that would
// break one is sent without `_datadog`, succeeds, and is reported as skipped.
func TestLimitsInQueryAndSNS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ten := map[string]map[string]string{}
	tenSNS := map[string]snstypes.MessageAttributeValue{}
	for i := range MaxAttributes {
		ten[fmt.Sprint("a", i)] = map[string]string{"DataType": "String", "StringValue": "v"}
		tenSNS[fmt.Sprint("a", i)] = snstypes.MessageAttributeValue{DataType: awssdk.String("String"), StringValue: awssdk.String("v")}
	}
	big := strings.Repeat("x", DefaultMaxMessageBytes-10)
	// injected says whether what the emulator received since request n carries _datadog.
	injected := func(t *testing.T, up *verifier, since int) bool {
		t.Helper()
		up.mu.Lock()
		defer up.mu.Unlock()
		if len(up.bodies) <= since {
			t.Fatal("nothing reached upstream")
		}
		for _, b := range up.bodies[since:] {
			if strings.Contains(b, ddAttr) {
				return true
			}
		}
		return false
	}
	noneInjected := func(t *testing.T, up *verifier, since int, what string) {
		t.Helper()
		if injected(t, up, since) {
			t.Errorf("%s: the upstream request carries _datadog", what)
		}
	}

	t.Run("sqs-query", func(t *testing.T) {
		up := sqsPeer(t)
		tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
		aws := newCLI(t, tp.url)
		var cq struct{ QueueUrl string }
		aws.run(ctx, &cq, "sqs", "create-queue", "--queue-name", "limits")
		attrs, _ := json.Marshal(ten)
		n := up.count()
		aws.run(ctx, nil, "sqs", "send-message", "--queue-url", cq.QueueUrl, "--message-body", "plain")
		if !injected(t, up, n) {
			t.Fatal("a plain message went upstream without _datadog")
		}
		n = up.count()
		aws.run(ctx, nil, "sqs", "send-message", "--queue-url", cq.QueueUrl, "--message-body", "ten", "--message-attributes", string(attrs))
		noneInjected(t, up, n, "10 attributes")
		bodyFile := filepath.Join(t.TempDir(), "body")
		if err := os.WriteFile(bodyFile, []byte(big), 0o600); err != nil {
			t.Fatal(err)
		}
		n = up.count()
		aws.run(ctx, nil, "sqs", "send-message", "--queue-url", cq.QueueUrl, "--message-body", "file://"+bodyFile)
		noneInjected(t, up, n, "near 256 KiB")
		if a, s := len(tp.ev.named("attribute_limit")), len(tp.ev.named("size_limit")); a != 1 || s != 1 {
			t.Errorf("%d attribute_limit and %d size_limit events, want 1 each", a, s)
		}
		if st := tp.Stats(); st.Injected != 1 || st.Skipped != 2 {
			t.Errorf("stats %+v", st)
		}
	})

	t.Run("sns", func(t *testing.T) {
		up := snsPeer(t)
		tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
		sn := snsClient(tp.url, "")
		topic, err := sn.CreateTopic(ctx, &sns.CreateTopicInput{Name: awssdk.String("limits")})
		if err != nil {
			t.Fatalf("CreateTopic: %v", err)
		}
		n := up.count()
		if _, err := sn.Publish(ctx, &sns.PublishInput{TopicArn: topic.TopicArn, Message: awssdk.String("plain")}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		if !injected(t, up, n) {
			t.Fatal("a plain message went upstream without _datadog")
		}
		n = up.count()
		if _, err := sn.Publish(ctx, &sns.PublishInput{TopicArn: topic.TopicArn, Message: awssdk.String("ten"), MessageAttributes: tenSNS}); err != nil {
			t.Fatalf("Publish with 10 attributes: %v", err)
		}
		noneInjected(t, up, n, "10 attributes")
		n = up.count()
		if _, err := sn.Publish(ctx, &sns.PublishInput{TopicArn: topic.TopicArn, Message: &big}); err != nil {
			t.Fatalf("Publish near 256 KiB: %v", err)
		}
		noneInjected(t, up, n, "near 256 KiB")
		// With `_datadog` (some 100 bytes) it would fit by SNS's documented count, but within
		// the 256 bytes dd-trace-go keeps free of SNS's own accounting: SNS refusing it would
		// fail the client's Publish, which, unlike an SQS send, is not sent again without it.
		near := strings.Repeat("y", DefaultMaxMessageBytes-snsSizeMargin-20)
		n = up.count()
		if _, err := sn.Publish(ctx, &sns.PublishInput{TopicArn: topic.TopicArn, Message: &near}); err != nil {
			t.Fatalf("Publish within the margin: %v", err)
		}
		noneInjected(t, up, n, "within 256 bytes of 256 KiB")
		if a, s := len(tp.ev.named("attribute_limit")), len(tp.ev.named("size_limit")); a != 1 || s != 2 {
			t.Errorf("%d attribute_limit and %d size_limit events, want 1 and 2", a, s)
		}
		if st := tp.Stats(); st.Injected != 1 || st.Skipped != 3 {
			t.Errorf("stats %+v", st)
		}
	})
}

// TestOverLimitContentLengthAnsweredAtOnce: a request that announces a body over max_body_bytes
// is answered 413 as soon as its header is read, in its wire form, and its connection closes.
// It waited for the limit's worth of bytes or the 2-minute body timeout, holding the connection,
// before saying what it could have said at once (found in a soak run with nc). A client that
// waits for 100 Continue before it sends the body (Expect: 100-continue, as curl does for big
// bodies) gets the 413 in its place: told to go on, it would start sending what is refused.
func TestOverLimitContentLengthAnsweredAtOnce(t *testing.T) {
	tp := startProxy(t, func(cfg *Config) { cfg.MaxBodyBytes = 1 << 20 })
	for _, tc := range []struct {
		name, header, want string
	}{
		{"json", "Content-Type: application/x-amz-json-1.0\r\nX-Amz-Target: AmazonSQS.SendMessage\r\n", `"__type":"com.amazon.coral.service#RequestEntityTooLarge"`},
		{"query", "Content-Type: application/x-www-form-urlencoded\r\n", "<Code>RequestEntityTooLarge</Code>"},
		{"far over", "X-Amz-Target: AmazonSQS.SendMessage\r\nContent-Type: application/x-amz-json-1.0\r\n", "RequestEntityTooLarge"},
		{"expects 100-continue", "Expect: 100-continue\r\nX-Amz-Target: AmazonSQS.SendMessage\r\nContent-Type: application/x-amz-json-1.0\r\n", "RequestEntityTooLarge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", tp.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			length := 1<<20 + 1
			if tc.name == "far over" {
				length = 10_000_000_000
			}
			fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\nabc", tp.Addr(), tc.header, length)
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no answer to a request announcing %d bytes over a limit of 1 MiB: %v", length, err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), tc.want) {
				t.Fatalf("answer %d %s, want 413 with %s", resp.StatusCode, body, tc.want)
			}
			if !resp.Close {
				t.Error("the answer did not say the connection closes")
			}
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatal("the connection stayed open after a body it did not read")
			}
		})
	}
}
