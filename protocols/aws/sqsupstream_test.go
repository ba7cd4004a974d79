package aws

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// TestReceiveWithoutAttributeNames: a consumer that asks for no message attributes, the common
// case, gets none and no MD5 of them, as from SQS, although the proxy asked upstream for
// `_datadog` to checkpoint the message; its consume points still follow the producer's.
func TestReceiveWithoutAttributeNames(t *testing.T) {
	for _, client := range []string{"json", "query"} {
		t.Run(client, func(t *testing.T) {
			queue := "no-names-" + client
			tp, up, cl, qurl, ctx := sqsSetup(t, queue, nil)
			for _, in := range []*sqs.SendMessageInput{
				{QueueUrl: &qurl, MessageBody: awssdk.String("with an attribute"), MessageAttributes: map[string]types.MessageAttributeValue{"tenant": strAttr("acme")}},
				{QueueUrl: &qurl, MessageBody: awssdk.String("bare")},
			} {
				if _, err := cl.SendMessage(ctx, in); err != nil {
					t.Fatal(err)
				}
			}
			type received struct {
				Body                   string
				MD5OfMessageAttributes *string
				MessageAttributes      map[string]any
			}
			var got []received
			for len(got) < 2 && ctx.Err() == nil {
				switch client {
				case "json":
					out, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &qurl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1})
					if err != nil {
						t.Fatal(err)
					}
					for _, m := range out.Messages {
						r := received{Body: awssdk.ToString(m.Body), MD5OfMessageAttributes: m.MD5OfMessageAttributes}
						if len(m.MessageAttributes) > 0 {
							r.MessageAttributes = map[string]any{}
							for k, v := range m.MessageAttributes {
								r.MessageAttributes[k] = v
							}
						}
						got = append(got, r)
					}
				case "query":
					var rm struct{ Messages []received }
					newCLI(t, tp.url).run(ctx, &rm, "sqs", "receive-message", "--queue-url", qurl, "--max-number-of-messages", "10", "--wait-time-seconds", "1")
					got = append(got, rm.Messages...)
				}
			}
			if len(got) != 2 {
				t.Fatalf("received %d messages, want 2", len(got))
			}
			for _, m := range got {
				if len(m.MessageAttributes) > 0 || m.MD5OfMessageAttributes != nil {
					t.Errorf("%q: attributes %v and MD5 %v returned to a consumer that asked for none",
						m.Body, m.MessageAttributes, awssdk.ToString(m.MD5OfMessageAttributes))
				}
			}
			assertChained(t, tp, "sqs", queue, 2)
			if bad := up.failures(); len(bad) > 0 {
				t.Fatalf("upstream signature failures: %v", bad)
			}
		})
	}
}

// TestQueueURLsGoUpstream: queue URLs in requests point at the proxy (it handed them out) and
// must reach the upstream pointing at it, in JSON and Query bodies, and also when this proxy
// never handed that URL out (a restarted proxy, or another instance behind the same address).
// local-aws-sqs reads only the queue name from the URL, so the upstream check looks at the bodies.
func TestQueueURLsGoUpstream(t *testing.T) {
	tp, up, cl, qurl, ctx := sqsSetup(t, "urls", nil)
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: awssdk.String("json")}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: &qurl}); err != nil {
		t.Fatal(err)
	}
	aws := newCLI(t, tp.url)
	aws.run(ctx, nil, "sqs", "send-message", "--queue-url", qurl, "--message-body", "query")
	aws.run(ctx, nil, "sqs", "receive-message", "--queue-url", qurl, "--wait-time-seconds", "1")
	// Another proxy in front of the same upstream, which has never seen the queue.
	other := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ou, err := url.Parse(qurl)
	if err != nil {
		t.Fatal(err)
	}
	ou.Host = other.Addr().String()
	if _, err := sqsClient(other.url, testKey, testSecret).SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: awssdk.String(ou.String()), MessageBody: awssdk.String("elsewhere")}); err != nil {
		t.Fatal(err)
	}

	bodies, _ := up.seen()
	checked := map[string]int{}
	for _, b := range bodies {
		var q string
		if strings.HasPrefix(b, "{") {
			var m struct{ QueueUrl string }
			if err := json.Unmarshal([]byte(b), &m); err != nil {
				t.Fatalf("upstream JSON body %q: %v", b, err)
			}
			q = m.QueueUrl
		} else if f, err := url.ParseQuery(b); err == nil {
			q = f.Get("QueueUrl")
		}
		if q == "" {
			continue
		}
		kind := "json"
		if !strings.HasPrefix(b, "{") {
			kind = "query"
		}
		checked[kind]++
		// The URL the upstream handed out (the emulator's own address), or, for the proxy that
		// never saw it, the configured upstream (the upstream check's address).
		if u, err := url.Parse(q); err != nil || u.Host != up.target.Host && u.Host != up.addr {
			t.Errorf("a %s request reached upstream with QueueUrl %q, not pointing at the upstream (%s or %s)", kind, q, up.target.Host, up.addr)
		}
	}
	// JSON: SendMessage, GetQueueAttributes, the other proxy's SendMessage; Query: send, receive.
	if checked["json"] < 3 || checked["query"] < 2 {
		t.Errorf("checked %v requests with a QueueUrl upstream, want at least 3 JSON and 2 Query", checked)
	}
}

// TestOnlyListedHeadersGoUpstream: the proxy signs its own request and sends only the client
// headers it lists, so cookies, forwarding headers, a client's session token and headers it does
// not know never reach the upstream, signed or not.
func TestOnlyListedHeadersGoUpstream(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	req, _ := http.NewRequest(http.MethodPost, tp.url+"/", strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/x-amz-json-1.0")
	req.Header.Set("X-Amz-Target", "AmazonSQS.ListQueues")
	dropped := map[string]string{"Cookie": "session=secret", "X-Forwarded-For": "203.0.113.7", "X-Client-Thing": "x"}
	for k, v := range dropped {
		req.Header.Set(k, v)
	}
	creds := awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret, SessionToken: "client-token"}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, sha256Hex([]byte("{}")), "sqs", "us-east-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(req.Header.Get("Authorization"), "cookie") {
		t.Fatalf("the client did not sign its extra headers: %s", req.Header.Get("Authorization"))
	}
	if st, _, body := do(t, req); st != http.StatusOK {
		t.Fatalf("ListQueues with extra headers: %d %s", st, body)
	}
	_, headers := up.seen()
	if len(headers) != 1 {
		t.Fatalf("%d requests upstream, want 1", len(headers))
	}
	h := headers[0]
	for _, k := range append([]string{"X-Amz-Security-Token"}, keys(dropped)...) {
		if v := h.Get(k); v != "" {
			t.Errorf("client header %s: %q reached upstream", k, v)
		}
	}
	if h.Get("X-Amz-Target") != "AmazonSQS.ListQueues" {
		t.Errorf("X-Amz-Target %q upstream", h.Get("X-Amz-Target"))
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream check: %v", bad)
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestFutureSignatureRefused: a signature dated past the allowed skew in the future is refused as
// one in the past is, and never forwarded.
func TestFutureSignatureRefused(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	st, _, body := do(t, signedRaw(t, tp.url+"/", "AmazonSQS.ListQueues", "{}", time.Now().Add(20*time.Minute), ""))
	if st != http.StatusForbidden || !strings.Contains(body, "SignatureDoesNotMatch") {
		t.Errorf("a signature 20 minutes ahead: %d %s", st, body)
	}
	if n := up.count(); n != 0 {
		t.Errorf("%d refused requests reached upstream", n)
	}
}

// TestAttributesMD5MatchesTheEmulator: the MD5 of message attributes, for the data types the
// published vectors do not cover (Number, custom String and Binary types), equals what
// local-aws-sqs computes with npm aws-md5-of-message-attributes, an implementation not ours.
// ASCII values only: that library prefixes a string value with its length in UTF-16 code units
// (StringValue.length) where AWS's Java SDK uses its UTF-8 byte length, as attributesMD5 does, so
// the two differ on other text. (aws-sdk-go-v2 checks only the body's MD5 on a send.)
func TestAttributesMD5MatchesTheEmulator(t *testing.T) {
	up := sqsPeer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl := sqsClient(up.target.String(), testKey, testSecret) // straight to the emulator
	cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("md5")})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []map[string]types.MessageAttributeValue{
		{"n": {DataType: awssdk.String("Number"), StringValue: awssdk.String("-12.5e3")}},
		{"s": {DataType: awssdk.String("String.custom"), StringValue: awssdk.String("plain text")}},
		{"b": {DataType: awssdk.String("Binary.png"), BinaryValue: []byte{0, 0xff, 7}}},
		{"z": strAttr("last"), "a": {DataType: awssdk.String("Number.int"), StringValue: awssdk.String("7")},
			"m": {DataType: awssdk.String("Binary"), BinaryValue: []byte("mid")}},
	} {
		out, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: cq.QueueUrl, MessageBody: awssdk.String("x"), MessageAttributes: tc})
		if err != nil {
			t.Fatalf("%v: %v", keysOf(tc), err)
		}
		if got, want := attributesMD5(sdkAttrs(tc)), awssdk.ToString(out.MD5OfMessageAttributes); got != want {
			t.Errorf("attributes %v: attributesMD5 %s, the emulator %s", keysOf(tc), got, want)
		}
	}
}

func keysOf(m map[string]types.MessageAttributeValue) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+":"+awssdk.ToString(v.DataType))
	}
	return out
}
