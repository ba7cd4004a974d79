package aws

import (
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// debianAWS is the Debian awscli 2.9 binary, a client that speaks the SQS Query protocol.
const debianAWS = "/usr/bin/aws"

type cli struct {
	t        *testing.T
	endpoint string
	env      []string
}

func newCLI(t *testing.T, endpoint string) *cli {
	if _, err := exec.LookPath(debianAWS); err != nil {
		t.Fatalf("the Query-protocol tests need Debian's awscli at %s (apt-get install -y awscli): %v", debianAWS, err)
	}
	home := t.TempDir()
	return &cli{t: t, endpoint: endpoint, env: []string{
		"PATH=" + getenv("PATH"), "HOME=" + home, "AWS_CONFIG_FILE=" + home + "/none", "AWS_SHARED_CREDENTIALS_FILE=" + home + "/none",
		"AWS_ACCESS_KEY_ID=" + testKey, "AWS_SECRET_ACCESS_KEY=" + testSecret, "AWS_DEFAULT_REGION=us-east-1", "AWS_PAGER=",
	}}
}

func (c *cli) run(ctx context.Context, out any, args ...string) {
	c.t.Helper()
	args = append(args, "--endpoint-url", c.endpoint, "--output", "json")
	cmd := exec.CommandContext(ctx, debianAWS, args...)
	cmd.Env = c.env
	b, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("aws %s output %s: %v", args[1], b, err)
		}
	}
}

type cliAttr struct {
	DataType    string
	StringValue *string
	BinaryValue string
}

func cliAttrs(m map[string]cliAttr) []attr {
	var out []attr
	for k, v := range m {
		a := attr{Name: k, DataType: v.DataType, String: v.StringValue}
		if v.StringValue == nil {
			a.Binary, _ = base64.StdEncoding.DecodeString(v.BinaryValue)
		}
		out = append(out, a)
	}
	return out
}

func TestSQSQueryProtocolCLI(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	aws := newCLI(t, tp.url)

	var cq struct{ QueueUrl string }
	aws.run(ctx, &cq, "sqs", "create-queue", "--queue-name", "legacy")
	if !strings.HasPrefix(cq.QueueUrl, tp.url+"/") {
		t.Fatalf("create-queue QueueUrl %q does not point at the proxy", cq.QueueUrl)
	}
	var lq struct{ QueueUrls []string }
	aws.run(ctx, &lq, "sqs", "list-queues")
	for _, u := range lq.QueueUrls {
		if !strings.HasPrefix(u, tp.url+"/") {
			t.Errorf("list-queues URL %q does not point at the proxy", u)
		}
	}
	// No '<', '&' or '\r' in the body: local-aws-sqs writes Body into its XML unescaped, so the
	// CLI could not parse the emulator's own answer (the JSON test covers '\r' round-tripping).
	var sm struct{ MD5OfMessageAttributes string }
	aws.run(ctx, &sm, "sqs", "send-message", "--queue-url", cq.QueueUrl, "--message-body", "line1\nline2\ttab",
		"--message-attributes", `{"tenant":{"DataType":"String","StringValue":"acme"},"blob":{"DataType":"Binary","BinaryValue":"AAEC"}}`)
	want := attributesMD5([]attr{{Name: "tenant", DataType: "String", String: sp("acme")}, {Name: "blob", DataType: "Binary", Binary: []byte{0, 1, 2}}})
	if sm.MD5OfMessageAttributes != want {
		t.Errorf("send-message MD5OfMessageAttributes %q, want the client's %q", sm.MD5OfMessageAttributes, want)
	}
	var bm struct {
		Successful []struct{ Id, MD5OfMessageAttributes string }
		Failed     []any
	}
	aws.run(ctx, &bm, "sqs", "send-message-batch", "--queue-url", cq.QueueUrl, "--entries",
		`[{"Id":"a","MessageBody":"b1"},{"Id":"b","MessageBody":"b2","MessageAttributes":{"n":{"DataType":"Number","StringValue":"7"}}}]`)
	if len(bm.Successful) != 2 || len(bm.Failed) != 0 {
		t.Fatalf("send-message-batch: %+v", bm)
	}
	for _, e := range bm.Successful {
		w := ""
		if e.Id == "b" {
			w = attributesMD5([]attr{{Name: "n", DataType: "Number", String: sp("7")}})
		}
		if e.MD5OfMessageAttributes != w {
			t.Errorf("batch entry %s MD5OfMessageAttributes %q, want %q", e.Id, e.MD5OfMessageAttributes, w)
		}
	}
	var msgs []struct {
		Body                   string
		MD5OfMessageAttributes string
		MessageAttributes      map[string]cliAttr
	}
	for len(msgs) < 3 && ctx.Err() == nil {
		var rm struct {
			Messages []struct {
				Body                   string
				MD5OfMessageAttributes string
				MessageAttributes      map[string]cliAttr
			}
		}
		aws.run(ctx, &rm, "sqs", "receive-message", "--queue-url", cq.QueueUrl, "--max-number-of-messages", "10",
			"--message-attribute-names", "tenant", "blob", "n", "--wait-time-seconds", "1")
		msgs = append(msgs, rm.Messages...)
	}
	if len(msgs) != 3 {
		t.Fatalf("received %d messages, want 3", len(msgs))
	}
	for _, m := range msgs {
		if _, ok := m.MessageAttributes[ddAttr]; ok {
			t.Errorf("%q: _datadog returned unasked", m.Body)
		}
		if w := attributesMD5(cliAttrs(m.MessageAttributes)); m.MD5OfMessageAttributes != w {
			t.Errorf("%q: MD5OfMessageAttributes %q, want %q", m.Body, m.MD5OfMessageAttributes, w)
		}
		if strings.HasPrefix(m.Body, "line1") && m.Body != "line1\nline2\ttab" {
			t.Errorf("body changed in transit: %q", m.Body)
		}
	}
	assertChained(t, tp, "sqs", "legacy", 3)
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
	// the client really spoke Query
	up.mu.Lock()
	defer up.mu.Unlock()
	if !strings.HasPrefix(up.bodies[0], "Action=") {
		t.Errorf("first upstream body %q is not a Query form", up.bodies[0])
	}
}

// TestQueryInjectReplacesTheValue: a `_datadog` sent as one transport and replaced as the other
// keeps exactly one value field, the new one; other pairs stay as sent, in order.
func TestQueryInjectReplacesTheValue(t *testing.T) {
	for _, tc := range []struct {
		name     string
		body     string
		prefix   string
		binary   bool
		keep     string // the value field the result must have
		dropped  string // and must not
		wantRest string // pairs before the attribute's, as sent
	}{
		{"sns string to binary", "Action=Publish&Message=hi&MessageAttributes.entry.1.Name=_datadog&MessageAttributes.entry.1.Value.DataType=String&MessageAttributes.entry.1.Value.StringValue=old",
			"MessageAttributes.entry.", true, "MessageAttributes.entry.1.Value.BinaryValue", "MessageAttributes.entry.1.Value.StringValue", "Action=Publish&Message=hi"},
		{"sqs binary to string", "Action=SendMessage&MessageBody=hi&MessageAttribute.1.Name=_datadog&MessageAttribute.1.Value.DataType=Binary&MessageAttribute.1.Value.BinaryValue=b2xk",
			"MessageAttribute.", false, "MessageAttribute.1.Value.StringValue", "MessageAttribute.1.Value.BinaryValue", "Action=SendMessage&MessageBody=hi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseForm([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			queryInject(f, tc.prefix, f.queryAttrs(tc.prefix), []byte(`{"dd-pathway-ctx-base64":"new"}`), tc.binary)
			out := string(f.encode())
			g, err := parseForm([]byte(out))
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := g.vals[tc.keep]; !ok {
				t.Errorf("%s missing: %s", tc.keep, out)
			}
			if v, ok := g.vals[tc.dropped]; ok {
				t.Errorf("%s still sent (%q): %s", tc.dropped, v, out)
			}
			if !strings.HasPrefix(out, tc.wantRest+"&") {
				t.Errorf("pairs before the attribute changed: %s", out)
			}
			if attrs := g.queryAttrs(tc.prefix); len(attrs) != 1 {
				t.Errorf("%d attributes: %s", len(attrs), out)
			}
		})
	}
}

// TestQueryReceiveKeepsCarriageReturns: SQS writes a CR in a body or attribute value as `&#xD;`
// (XML would turn a raw CR into LF). Stripping `_datadog` from a ReceiveMessage answer must leave
// those bytes as they are, and the new MD5OfMessageAttributes must be over the decoded value, CR
// included, as the SDK that checks it decodes it. The npm SQS server writes raw CRs, so this
// answer is written here the way SQS writes it.
func TestQueryReceiveKeepsCarriageReturns(t *testing.T) {
	value := "ac\rme"
	dd := `{"dd-pathway-ctx-base64":"ocO+LRhP1p+shY3bwGishY3bwGg="}`
	tenant := attr{Name: "tenant", DataType: "String", String: &value}
	all := attributesMD5([]attr{tenant, {Name: ddAttr, DataType: "String", String: &dd}})
	ddElem := `<MessageAttribute><Name>_datadog</Name><Value><StringValue>{&quot;dd-pathway-ctx-base64&quot;:&quot;ocO+LRhP1p+shY3bwGishY3bwGg=&quot;}</StringValue><DataType>String</DataType></Value></MessageAttribute>`
	resp := `<?xml version="1.0"?><ReceiveMessageResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/"><ReceiveMessageResult><Message>` +
		`<MessageId>m1</MessageId><ReceiptHandle>h1</ReceiptHandle><MD5OfBody>` + md5hex("line1\r\nline2") + `</MD5OfBody>` +
		"<Body>line1&#xD;\nline2</Body>" +
		`<MessageAttribute><Name>tenant</Name><Value><StringValue>ac&#xD;me</StringValue><DataType>String</DataType></Value></MessageAttribute>` +
		ddElem + `<MD5OfMessageAttributes>` + all + `</MD5OfMessageAttributes></Message></ReceiveMessageResult>` +
		`<ResponseMetadata><RequestId>r1</RequestId></ResponseMetadata></ReceiveMessageResponse>`
	want := strings.Replace(strings.Replace(resp, ddElem, "", 1), all, attributesMD5([]attr{tenant}), 1)

	p := fuzzProxy(t, false)
	c := fuzzCall(ServiceSQS, "ReceiveMessage", wireQuery,
		[]byte("Action=ReceiveMessage&QueueUrl=http%3A%2F%2F127.0.0.1%3A4566%2F000000000000%2Forders&MessageAttributeName.1=tenant&Version=2012-11-05"))
	_, fix := p.rewriteRequest(c)
	if fix == nil {
		t.Fatal("no response fixer for ReceiveMessage")
	}
	if got := string(fix([]byte(resp))); got != want {
		t.Errorf("answer to the client:\n got %s\nwant %s", got, want)
	}
}

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}
