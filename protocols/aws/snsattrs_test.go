package aws

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// SNS carries `_datadog` as a message attribute of DataType Binary whose BinaryValue is the JSON
// carrier {"dd-pathway-ctx-base64": ...}, as dd-trace does for SNS. These tests read what the
// upstream received, not what the proxy says it did.

// snsUpBodies returns the request bodies the upstream check received from the n-th on.
func snsUpBodies(v *verifier, n int) []string {
	b, _ := v.seen()
	if n > len(b) {
		return nil
	}
	return b[n:]
}

// snsCheckCarrier checks a `_datadog` attribute value as the upstream received it: DataType Binary, no
// StringValue, a BinaryValue that is base64 of a JSON object whose dd-pathway-ctx-base64 is a
// pathway context. It returns the decoded carrier and context (zero when a check failed).
func snsCheckCarrier(t *testing.T, where, dataType string, hasString bool, binaryValue string, hasBinary bool) (map[string]any, pathway.Context) {
	t.Helper()
	if dataType != "Binary" {
		t.Errorf("%s: _datadog DataType = %q, want \"Binary\" (SNS carries the context as a Binary attribute)", where, dataType)
	}
	if hasString {
		t.Errorf("%s: _datadog has a StringValue; a Binary attribute carries only BinaryValue", where)
	}
	if !hasBinary {
		t.Errorf("%s: _datadog has no BinaryValue", where)
		return nil, pathway.Context{}
	}
	raw, err := base64.StdEncoding.DecodeString(binaryValue)
	if err != nil {
		t.Errorf("%s: _datadog BinaryValue %q is not base64: %v", where, binaryValue, err)
		return nil, pathway.Context{}
	}
	var carrier map[string]any
	if err := json.Unmarshal(raw, &carrier); err != nil {
		t.Errorf("%s: _datadog BinaryValue decodes to %q, not a JSON object: %v", where, raw, err)
		return nil, pathway.Context{}
	}
	s, ok := carrier[pathway.HeaderKey].(string)
	if !ok {
		t.Errorf("%s: _datadog carrier %s has no string %q", where, raw, pathway.HeaderKey)
		return carrier, pathway.Context{}
	}
	ctx, err := pathway.DecodeBase64String(s)
	if err != nil || ctx.IsZero() {
		t.Errorf("%s: %s=%q is not a pathway context: %v", where, pathway.HeaderKey, s, err)
		return carrier, pathway.Context{}
	}
	return carrier, ctx
}

// snsFormAttr is one Query-protocol message attribute: prefix+N+".Name", ".Value.DataType", ...
type snsFormAttr struct {
	name, dataType, stringValue, binaryValue string
	hasString, hasBinary                     bool
}

// snsFormAttrs reads the attributes numbered 1.. under prefix ("MessageAttributes.entry.", or
// "PublishBatchRequestEntries.member.N.MessageAttributes.entry."), the keys sns.go writes.
func snsFormAttrs(vals url.Values, prefix string) []snsFormAttr {
	var out []snsFormAttr
	for n := 1; ; n++ {
		p := prefix + fmt.Sprint(n) + "."
		if !vals.Has(p + "Name") {
			return out
		}
		out = append(out, snsFormAttr{
			name: vals.Get(p + "Name"), dataType: vals.Get(p + "Value.DataType"),
			stringValue: vals.Get(p + "Value.StringValue"), hasString: vals.Has(p + "Value.StringValue"),
			binaryValue: vals.Get(p + "Value.BinaryValue"), hasBinary: vals.Has(p + "Value.BinaryValue"),
		})
	}
}

// snsCheckFormMessage checks one message's attributes in a form body: exactly one `_datadog`, Binary,
// with a pathway carrier, and the client's attributes as sent. It returns the context.
func snsCheckFormMessage(t *testing.T, where string, vals url.Values, prefix string, user map[string]string, carrierKeys map[string]string) pathway.Context {
	t.Helper()
	attrs := snsFormAttrs(vals, prefix)
	var dd []snsFormAttr
	seen := map[string]string{}
	for _, a := range attrs {
		if a.name == ddAttr {
			dd = append(dd, a)
			continue
		}
		seen[a.name] = a.stringValue
	}
	for k, v := range user {
		if seen[k] != v {
			t.Errorf("%s: client attribute %s = %q upstream, want %q", where, k, seen[k], v)
		}
	}
	if len(seen) != len(user) {
		t.Errorf("%s: upstream attributes %v, want the client's %v and _datadog", where, seen, user)
	}
	if len(dd) != 1 {
		t.Errorf("%s: %d attributes named %s under %q in %v, want 1", where, len(dd), ddAttr, prefix, vals)
		return pathway.Context{}
	}
	carrier, ctx := snsCheckCarrier(t, where, dd[0].dataType, dd[0].hasString, dd[0].binaryValue, dd[0].hasBinary)
	for k, v := range carrierKeys {
		if carrier != nil && carrier[k] != v {
			t.Errorf("%s: carrier %v lost the client's %s=%q", where, carrier, k, v)
		}
	}
	return ctx
}

func snsStrAttr(s string) snstypes.MessageAttributeValue {
	return snstypes.MessageAttributeValue{DataType: awssdk.String("String"), StringValue: awssdk.String(s)}
}

// TestSNSDatadogBinaryAttributeQuery publishes with aws-sdk-go-v2 (the Query protocol) through the
// proxy to fauxqs and parses the form bodies the upstream check received: every published message
// carries one `_datadog` of DataType Binary whose BinaryValue is the JSON carrier of the
// message's type:sns produce checkpoint.
func TestSNSDatadogBinaryAttributeQuery(t *testing.T) {
	up := snsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sn := snsClient(tp.url, "publisher")
	topic, err := sn.CreateTopic(ctx, &sns.CreateTopicInput{Name: awssdk.String("binattrs")})
	if err != nil {
		t.Fatalf("CreateTopic through proxy: %v", err)
	}
	arn := topic.TopicArn
	// A client `_datadog` without a pathway (a tracer's trace headers only) becomes the carrier's
	// other members; the proxy adds the pathway and sends it as Binary.
	traceOnly := map[string]snstypes.MessageAttributeValue{ddAttr: snsStrAttr(`{"x-datadog-trace-id":"7"}`), "kind": snsStrAttr("k")}

	type msg struct {
		prefix      string            // where the message's attributes are in the form
		user        map[string]string // the client's own attributes, as they must arrive
		carrierKeys map[string]string // client carrier members that must survive
	}
	cases := []struct {
		name    string
		action  string
		publish func() error
		msgs    []msg
	}{
		{name: "Publish without attributes", action: "Publish",
			publish: func() error {
				_, err := sn.Publish(ctx, &sns.PublishInput{TopicArn: arn, Message: awssdk.String("plain")})
				return err
			},
			msgs: []msg{{prefix: "MessageAttributes.entry."}}},
		{name: "Publish with a client attribute", action: "Publish",
			publish: func() error {
				_, err := sn.Publish(ctx, &sns.PublishInput{TopicArn: arn, Message: awssdk.String("with attrs"),
					MessageAttributes: map[string]snstypes.MessageAttributeValue{"kind": snsStrAttr("greeting")}})
				return err
			},
			msgs: []msg{{prefix: "MessageAttributes.entry.", user: map[string]string{"kind": "greeting"}}}},
		{name: "Publish with a String _datadog without pathway", action: "Publish",
			publish: func() error {
				_, err := sn.Publish(ctx, &sns.PublishInput{TopicArn: arn, Message: awssdk.String("traced"), MessageAttributes: traceOnly})
				return err
			},
			msgs: []msg{{prefix: "MessageAttributes.entry.", user: map[string]string{"kind": "k"}, carrierKeys: map[string]string{"x-datadog-trace-id": "7"}}}},
		{name: "PublishBatch", action: "PublishBatch",
			publish: func() error {
				out, err := sn.PublishBatch(ctx, &sns.PublishBatchInput{TopicArn: arn, PublishBatchRequestEntries: []snstypes.PublishBatchRequestEntry{
					{Id: awssdk.String("e1"), Message: awssdk.String("batch one")},
					{Id: awssdk.String("e2"), Message: awssdk.String("batch two"), MessageAttributes: map[string]snstypes.MessageAttributeValue{"kind": snsStrAttr("second")}},
					{Id: awssdk.String("e3"), Message: awssdk.String("batch three"), MessageAttributes: traceOnly},
				}})
				if err == nil && (len(out.Successful) != 3 || len(out.Failed) != 0) {
					err = fmt.Errorf("%d successful, %d failed entries", len(out.Successful), len(out.Failed))
				}
				return err
			},
			msgs: []msg{
				{prefix: "PublishBatchRequestEntries.member.1.MessageAttributes.entry."},
				{prefix: "PublishBatchRequestEntries.member.2.MessageAttributes.entry.", user: map[string]string{"kind": "second"}},
				{prefix: "PublishBatchRequestEntries.member.3.MessageAttributes.entry.", user: map[string]string{"kind": "k"}, carrierKeys: map[string]string{"x-datadog-trace-id": "7"}},
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			from := up.count()
			points := len(tp.rec.withTags("direction:out", "topic:binattrs", "type:sns"))
			if err := tc.publish(); err != nil {
				t.Fatalf("%s through proxy: %v", tc.action, err)
			}
			var sent []url.Values
			for _, b := range snsUpBodies(up, from) {
				vals, err := url.ParseQuery(b)
				if err != nil {
					t.Fatalf("upstream body is not a form: %v\n%s", err, b)
				}
				if vals.Get("Action") == tc.action {
					sent = append(sent, vals)
				}
			}
			if len(sent) != 1 {
				t.Fatalf("upstream received %d %s requests, want 1", len(sent), tc.action)
			}
			prod := tp.rec.withTags("direction:out", "topic:binattrs", "type:sns")[points:]
			if len(prod) != len(tc.msgs) {
				t.Errorf("%d type:sns produce points, want %d", len(prod), len(tc.msgs))
			}
			hashes := map[uint64]bool{}
			for _, p := range prod {
				hashes[p.Hash] = true
			}
			for i, m := range tc.msgs {
				where := fmt.Sprintf("%s message %d", tc.action, i+1)
				c := snsCheckFormMessage(t, where, sent[0], m.prefix, m.user, m.carrierKeys)
				if !c.IsZero() && !hashes[c.Hash] {
					t.Errorf("%s: carrier hash %d is not one of the produce points' %v", where, c.Hash, hashes)
				}
			}
		})
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// snsWireAttr is an SNS MessageAttributeValue on the JSON protocol.
type snsWireAttr struct {
	DataType    string
	StringValue *string
	BinaryValue *string // base64, as the JSON protocol sends blobs
}

// snsCheckJSONMessage checks one message's MessageAttributes in a JSON body, as snsCheckFormMessage.
func snsCheckJSONMessage(t *testing.T, where string, attrs map[string]snsWireAttr, user map[string]string) pathway.Context {
	t.Helper()
	seen := map[string]string{}
	for k, v := range attrs {
		if k != ddAttr {
			seen[k] = awssdk.ToString(v.StringValue)
		}
	}
	for k, v := range user {
		if seen[k] != v {
			t.Errorf("%s: client attribute %s = %q upstream, want %q", where, k, seen[k], v)
		}
	}
	if len(seen) != len(user) {
		t.Errorf("%s: upstream attributes %v, want the client's %v and _datadog", where, seen, user)
	}
	dd, ok := attrs[ddAttr]
	if !ok {
		t.Errorf("%s: no %s in MessageAttributes %v", where, ddAttr, attrs)
		return pathway.Context{}
	}
	_, c := snsCheckCarrier(t, where, dd.DataType, dd.StringValue != nil, awssdk.ToString(dd.BinaryValue), dd.BinaryValue != nil)
	return c
}

type snsJSONEntry struct {
	Id                string
	MessageAttributes map[string]snsWireAttr
}

type snsJSONRequest struct {
	MessageAttributes          map[string]snsWireAttr
	PublishBatchRequestEntries []snsJSONEntry
}

// snsJSONCase is an SNS request on the JSON protocol (X-Amz-Target
// AmazonSimpleNotificationService.<op>).
type snsJSONCase struct {
	name, op, body string
	user           []map[string]string // per message: the client's attributes
	resp           string              // an SNS JSON success answer, for the rewrite-path test
}

func snsJSONCases(arn string) []snsJSONCase {
	a, _ := json.Marshal(arn)
	return []snsJSONCase{
		{name: "Publish without attributes", op: "Publish",
			body: `{"TopicArn":` + string(a) + `,"Message":"json plain"}`,
			user: []map[string]string{nil}, resp: `{"MessageId":"0b4b0e0e-1b2c-4d5e-8f90-123456789abc"}`},
		{name: "Publish with null attributes", op: "Publish",
			body: `{"TopicArn":` + string(a) + `,"Message":"json null","MessageAttributes":null}`,
			user: []map[string]string{nil}, resp: `{"MessageId":"1b4b0e0e-1b2c-4d5e-8f90-123456789abc"}`},
		{name: "Publish with a client attribute", op: "Publish",
			body: `{"TopicArn":` + string(a) + `,"Message":"json attrs","MessageAttributes":{"kind":{"DataType":"String","StringValue":"greeting"}}}`,
			user: []map[string]string{{"kind": "greeting"}}, resp: `{"MessageId":"2b4b0e0e-1b2c-4d5e-8f90-123456789abc"}`},
		{name: "PublishBatch", op: "PublishBatch",
			body: `{"TopicArn":` + string(a) + `,"PublishBatchRequestEntries":[{"Id":"e1","Message":"json batch one"},` +
				`{"Id":"e2","Message":"json batch two","MessageAttributes":{"kind":{"DataType":"String","StringValue":"second"}}}]}`,
			user: []map[string]string{nil, {"kind": "second"}},
			resp: `{"Successful":[{"Id":"e1","MessageId":"3b4b0e0e-1b2c-4d5e-8f90-123456789abc"},{"Id":"e2","MessageId":"4b4b0e0e-1b2c-4d5e-8f90-123456789abc"}],"Failed":[]}`},
	}
}

// snsCheckJSONBody checks every message of an SNS JSON request body and returns their contexts.
func snsCheckJSONBody(t *testing.T, tc snsJSONCase, body []byte) []pathway.Context {
	t.Helper()
	var req snsJSONRequest
	if err := json.Unmarshal(body, &req); err != nil {
		t.Fatalf("rewritten body is not JSON: %v\n%s", err, body)
	}
	var out []pathway.Context
	if tc.op == "Publish" {
		return append(out, snsCheckJSONMessage(t, tc.op, req.MessageAttributes, tc.user[0]))
	}
	if len(req.PublishBatchRequestEntries) != len(tc.user) {
		t.Fatalf("%d entries upstream, want %d:\n%s", len(req.PublishBatchRequestEntries), len(tc.user), body)
	}
	for i, e := range req.PublishBatchRequestEntries {
		out = append(out, snsCheckJSONMessage(t, fmt.Sprintf("PublishBatch entry %s", e.Id), e.MessageAttributes, tc.user[i]))
	}
	return out
}

// TestSNSDatadogBinaryAttributeJSON sends SNS Publish and PublishBatch on the JSON protocol
// (X-Amz-Target AmazonSimpleNotificationService.*, application/x-amz-json-1.0), signed with
// aws-sdk-go-v2's signer, through the proxy to fauxqs, and checks the body the upstream check
// received: `_datadog` of DataType Binary with the pathway carrier in BinaryValue.
//
// fauxqs 1.9 serves SNS on the Query protocol only: it routes every x-amz-json-1.0 request to its
// SQS handler, which refuses the SNS target. So the publish fails upstream and the proxy must not
// make a produce checkpoint for it; if fauxqs accepts it, the type:sns produce point is required.
// TestSNSJSONRewriteProducePoint covers the produce point of a successful JSON publish.
func TestSNSDatadogBinaryAttributeJSON(t *testing.T) {
	up := snsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sn := snsClient(tp.url, "")
	topic, err := sn.CreateTopic(ctx, &sns.CreateTopicInput{Name: awssdk.String("jsonattrs")})
	if err != nil {
		t.Fatalf("CreateTopic through proxy: %v", err)
	}
	creds := awssdk.Credentials{AccessKeyID: testKey, SecretAccessKey: testSecret}
	for _, tc := range snsJSONCases(*topic.TopicArn) {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, tp.url+"/", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/x-amz-json-1.0")
			req.Header.Set("X-Amz-Target", "AmazonSimpleNotificationService."+tc.op)
			if err := v4.NewSigner().SignHTTP(ctx, creds, req, sha256Hex([]byte(tc.body)), "sns", "us-east-1", time.Now()); err != nil {
				t.Fatal(err)
			}
			from := up.count()
			points := len(tp.rec.withTags("direction:out", "topic:jsonattrs", "type:sns"))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("%s through proxy: %v", tc.op, err)
			}
			var answer bytes.Buffer
			answer.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusForbidden {
				t.Fatalf("proxy refused the SDK-signed request: %s", answer.String())
			}
			sent := snsUpBodies(up, from)
			if len(sent) != 1 {
				t.Fatalf("upstream received %d requests, want 1", len(sent))
			}
			ctxs := snsCheckJSONBody(t, tc, []byte(sent[0]))
			prod := tp.rec.withTags("direction:out", "topic:jsonattrs", "type:sns")[points:]
			if resp.StatusCode/100 != 2 {
				t.Logf("fauxqs answered the JSON %s with %d %s", tc.op, resp.StatusCode, answer.String())
				if len(prod) != 0 {
					t.Errorf("%d produce points for a publish the upstream refused, want 0", len(prod))
				}
				return
			}
			if len(prod) != len(ctxs) {
				t.Fatalf("%d type:sns produce points, want %d", len(prod), len(ctxs))
			}
			hashes := map[uint64]bool{}
			for _, p := range prod {
				hashes[p.Hash] = true
			}
			for _, c := range ctxs {
				if !c.IsZero() && !hashes[c.Hash] {
					t.Errorf("carrier hash %d is not one of the produce points' %v", c.Hash, hashes)
				}
			}
		})
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestSNSJSONRewriteProducePoint drives the proxy's SNS JSON rewrite the way the rewrite tests do
// (rewriteRequest, then the answer's fixer with an SNS JSON success answer), since no npm SNS
// emulator serves the JSON protocol: the rewritten body carries `_datadog` as Binary, and a
// successful publish makes one type:sns produce point per message whose hash is the carrier's.
func TestSNSJSONRewriteProducePoint(t *testing.T) {
	arn := "arn:aws:sns:us-east-1:000000000000:jsonrewrite"
	for _, tc := range snsJSONCases(arn) {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			p, err := New(Config{Listen: "127.0.0.1:0", TrustClients: true, Upstream: "http://127.0.0.1:9", Observer: rec,
				Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, "")})
			if err != nil {
				t.Fatal(err)
			}
			body, fix := p.rewriteRequest(fuzzCall("sns", tc.op, wireJSON11, []byte(tc.body)))
			ctxs := snsCheckJSONBody(t, tc, body)
			if fix == nil {
				t.Fatal("no answer fixer: a successful publish would make no produce point")
			}
			fix([]byte(tc.resp))
			prod := rec.withTags("direction:out", "topic:jsonrewrite", "type:sns")
			if len(prod) != len(ctxs) || len(prod) != len(rec.all()) {
				t.Fatalf("produce points %+v, want %d type:sns ones", rec.all(), len(ctxs))
			}
			for i, c := range ctxs {
				if !c.IsZero() && c.Hash != prod[i].Hash {
					t.Errorf("message %d: carrier hash %d, produce point hash %d", i+1, c.Hash, prod[i].Hash)
				}
			}
		})
	}
}
