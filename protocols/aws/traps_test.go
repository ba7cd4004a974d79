package aws

// Tests for the traps of protocol-traps.md section 2 (SQS, SNS, Kinesis) that no other test
// reached, each against a real peer: Debian's awscli (the Query protocol), aws-sdk-go-v2, and the
// npm emulators behind the upstream signature check.

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	ktypes "github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// TestTrapQueryQueueURLOperations (2.6): a Query-protocol client (Java SDK v1 speaks it, and
// sends each request to its QueueUrl's host) must get queue URLs that point at the proxy from
// GetQueueUrl and ListDeadLetterSourceQueues too, not only from CreateQueue and ListQueues, or
// it bypasses the proxy from then on; and the URL sent back must reach the upstream pointing at
// it. Debian's awscli speaks Query to local-aws-sqs.
func TestTrapQueryQueueURLOperations(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	aws := newCLI(t, tp.url)

	var dlq, src struct{ QueueUrl string }
	aws.run(ctx, &dlq, "sqs", "create-queue", "--queue-name", "trap-dlq")
	var qa struct{ Attributes map[string]string }
	aws.run(ctx, &qa, "sqs", "get-queue-attributes", "--queue-url", dlq.QueueUrl, "--attribute-names", "QueueArn")
	policy, _ := json.Marshal(map[string]string{"deadLetterTargetArn": qa.Attributes["QueueArn"], "maxReceiveCount": "3"})
	attrs, _ := json.Marshal(map[string]string{"RedrivePolicy": string(policy)})
	file := filepath.Join(t.TempDir(), "attrs.json")
	if err := os.WriteFile(file, attrs, 0o600); err != nil {
		t.Fatal(err)
	}
	aws.run(ctx, &src, "sqs", "create-queue", "--queue-name", "trap-src", "--attributes", "file://"+file)

	var gq struct{ QueueUrl string }
	aws.run(ctx, &gq, "sqs", "get-queue-url", "--queue-name", "trap-src")
	if !strings.HasPrefix(gq.QueueUrl, tp.url+"/") {
		t.Errorf("get-queue-url (Query) answered %q, which does not point at the proxy %s", gq.QueueUrl, tp.url)
	}
	var ls struct {
		QueueUrls  []string `json:"queueUrls"`
		QueueUrls2 []string `json:"QueueUrls"`
	}
	aws.run(ctx, &ls, "sqs", "list-dead-letter-source-queues", "--queue-url", dlq.QueueUrl)
	listed := append(ls.QueueUrls, ls.QueueUrls2...)
	if len(listed) != 1 {
		t.Fatalf("list-dead-letter-source-queues (Query) listed %v, want the one source queue", listed)
	}
	if !strings.HasPrefix(listed[0], tp.url+"/") {
		t.Errorf("list-dead-letter-source-queues (Query) answered %q, which does not point at the proxy %s", listed[0], tp.url)
	}

	// The URLs handed out work when sent back, and reach the upstream pointing at it.
	from := up.count()
	aws.run(ctx, nil, "sqs", "send-message", "--queue-url", gq.QueueUrl, "--message-body", "via get-queue-url")
	aws.run(ctx, nil, "sqs", "send-message", "--queue-url", listed[0], "--message-body", "via the dead-letter listing")
	bodies, _ := up.seen()
	sends := 0
	for _, b := range bodies[from:] {
		f, err := url.ParseQuery(b)
		if err != nil || f.Get("Action") != "SendMessage" {
			continue
		}
		sends++
		if u, err := url.Parse(f.Get("QueueUrl")); err != nil || (u.Host != up.target.Host && u.Host != up.addr) {
			t.Errorf("SendMessage reached upstream with QueueUrl %q, not pointing at the upstream", f.Get("QueueUrl"))
		}
	}
	if sends != 2 {
		t.Errorf("%d SendMessage requests reached upstream, want 2", sends)
	}
	if n := len(tp.rec.withTags("direction:out", "topic:trap-src", "type:sqs")); n != 2 {
		t.Errorf("%d produce checkpoints on trap-src, want 2", n)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestTrapQueryReceiveAllKeepsDatadog (2.4): a Query-protocol consumer that asks for All
// attributes (a traced Java v1 consumer reads its `_datadog` so) gets `_datadog` as SQS stored
// it, beside its own attributes, with an MD5OfMessageAttributes that matches what it received
// (Java v1 checks it). The proxy must leave that answer alone rather than strip `_datadog`.
func TestTrapQueryReceiveAllKeepsDatadog(t *testing.T) {
	up := sqsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	aws := newCLI(t, tp.url)
	var cq struct{ QueueUrl string }
	aws.run(ctx, &cq, "sqs", "create-queue", "--queue-name", "trap-all")
	aws.run(ctx, nil, "sqs", "send-message", "--queue-url", cq.QueueUrl, "--message-body", "with tenant",
		"--message-attributes", `{"tenant":{"DataType":"String","StringValue":"acme"}}`)
	aws.run(ctx, nil, "sqs", "send-message", "--queue-url", cq.QueueUrl, "--message-body", "bare")

	type message struct {
		Body                   string
		MD5OfMessageAttributes string
		MessageAttributes      map[string]cliAttr
	}
	var msgs []message
	for len(msgs) < 2 && ctx.Err() == nil {
		var rm struct{ Messages []message }
		aws.run(ctx, &rm, "sqs", "receive-message", "--queue-url", cq.QueueUrl, "--max-number-of-messages", "10",
			"--message-attribute-names", "All", "--wait-time-seconds", "1")
		msgs = append(msgs, rm.Messages...)
	}
	if len(msgs) != 2 {
		t.Fatalf("received %d messages, want 2", len(msgs))
	}
	prod := map[uint64]bool{}
	for _, p := range tp.rec.withTags("direction:out", "topic:trap-all", "type:sqs") {
		prod[p.Hash] = true
	}
	for _, m := range msgs {
		dd, ok := m.MessageAttributes[ddAttr]
		if !ok {
			t.Errorf("%q: a consumer asking for All got no %s: %v", m.Body, ddAttr, m.MessageAttributes)
		} else if c := contextFromCarrier([]byte(awssdk.ToString(dd.StringValue))); !prod[c.Hash] {
			t.Errorf("%q: %s carries hash %d, not one of the produce checkpoints %v", m.Body, ddAttr, c.Hash, prod)
		}
		if m.Body == "with tenant" && awssdk.ToString(m.MessageAttributes["tenant"].StringValue) != "acme" {
			t.Errorf("%q: the client's attribute tenant is %v", m.Body, m.MessageAttributes)
		}
		if w := attributesMD5(cliAttrs(m.MessageAttributes)); m.MD5OfMessageAttributes != w {
			t.Errorf("%q: MD5OfMessageAttributes %q, want %q over the attributes received", m.Body, m.MD5OfMessageAttributes, w)
		}
	}
	assertChained(t, tp, "sqs", "trap-all", 2)
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestTrapKinesisRecordLimit (2.8): with injection into record data on, a JSON record that
// `_datadog` would push past Kinesis's 1 MiB for data plus partition key goes as the producer
// wrote it, alone (PutRecord) or beside a record that has room (PutRecords), and is reported as
// skipped; the record with room gets `_datadog`, and a consumer through the proxy reads every
// record's bytes as written. aws-sdk-go-v2 against kinesis-local.
func TestTrapKinesisRecordLimit(t *testing.T) {
	tp, up, kc, ctx := kinesisSetup(t, "trap-huge", func(c *Config) { c.KinesisInjectData = true })
	stream := awssdk.String("trap-huge")
	record := func(total int, pk string) []byte { // a JSON object; with pk, total bytes
		return []byte(`{"p":"` + strings.Repeat("x", total-len(pk)-len(`{"p":""}`)) + `"}`)
	}
	near := record(MaxKinesisRecordBytes-10, "near") // no room for `_datadog`
	roomy := record(MaxKinesisRecordBytes-1000, "roomy")

	from := up.count()
	if _, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: near, PartitionKey: awssdk.String("near")}); err != nil {
		t.Fatalf("PutRecord of a record 10 bytes under 1 MiB: %v", err)
	}
	pr, err := kc.PutRecords(ctx, &kinesis.PutRecordsInput{StreamName: stream, Records: []ktypes.PutRecordsRequestEntry{
		{Data: near, PartitionKey: awssdk.String("near")},
		{Data: roomy, PartitionKey: awssdk.String("roomy")},
	}})
	if err != nil || awssdk.ToInt32(pr.FailedRecordCount) != 0 {
		t.Fatalf("PutRecords: %v %+v", err, pr)
	}

	// What the stream server received.
	type rec struct {
		Data         []byte
		PartitionKey string
	}
	var sent []rec
	bodies, _ := up.seen()
	for _, b := range bodies[from:] {
		var req struct {
			rec
			Records []rec
		}
		if json.Unmarshal([]byte(b), &req) != nil {
			continue
		}
		if req.PartitionKey != "" {
			sent = append(sent, req.rec)
		}
		sent = append(sent, req.Records...)
	}
	if len(sent) != 3 {
		t.Fatalf("%d records reached the stream server, want 3", len(sent))
	}
	for i, r := range sent {
		switch r.PartitionKey {
		case "near":
			if !bytes.Equal(r.Data, near) {
				t.Errorf("record %d (10 bytes under 1 MiB) reached the stream server as %d bytes (%d with its key), not as written",
					i, len(r.Data), len(r.Data)+len(r.PartitionKey))
			}
		case "roomy":
			if !bytes.Contains(r.Data, []byte(`"_datadog":`)) || len(r.Data)+len(r.PartitionKey) > MaxKinesisRecordBytes {
				t.Errorf("record %d (1000 bytes of room) reached the stream server as %d bytes, without _datadog or over 1 MiB", i, len(r.Data))
			}
		}
	}
	if n := len(tp.ev.named("size_limit")); n != 2 {
		t.Errorf("%d size_limit events, want 2 (the near-limit record, put twice)", n)
	}
	if st := tp.Stats(); st.Injected != 1 || st.Skipped != 2 {
		t.Errorf("stats: %d injected, %d skipped; want 1 and 2", st.Injected, st.Skipped)
	}

	recs := readShard(t, ctx, kc, stream, 3)
	for i, want := range [][]byte{near, near, roomy} {
		if !bytes.Equal(recs[i].Data, want) {
			t.Errorf("consumer read record %d as %d bytes, want the producer's %d", i, len(recs[i].Data), len(want))
		}
	}
	prod := tp.rec.withTags("direction:out", "topic:trap-huge", "type:kinesis")
	cons := tp.rec.withTags("direction:in", "topic:trap-huge", "type:kinesis")
	if len(prod) != 3 || len(cons) != 3 {
		t.Fatalf("%d produce and %d consume points, want 3 and 3", len(prod), len(cons))
	}
	if cons[2].ParentHash != prod[2].Hash {
		t.Errorf("the injected record's consume point has parent %d, want its produce point %d", cons[2].ParentHash, prod[2].Hash)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestTrapAcceptEncodingNotForwarded (2.5, response side): the proxy reads and edits answers and
// relays them without Content-Encoding, so it must never let the service compress them: a
// client's Accept-Encoding: gzip (Go's transport sends one on every aws-sdk-go-v2 request) does
// not go upstream, and the edited answer reaches the client readable.
func TestTrapAcceptEncodingNotForwarded(t *testing.T) {
	tp, up, _, qurl, _ := sqsSetup(t, "trap-gzip", nil)
	body := `{"QueueUrl":"` + qurl + `","MessageBody":"compressible ` + strings.Repeat("a", 2000) + `"}`
	from := up.count()
	req := signedRaw(t, tp.url+"/", "AmazonSQS.SendMessage", body, time.Now(), "")
	req.Header.Set("Accept-Encoding", "gzip") // set, so net/http neither adds nor undoes it
	st, h, answer := do(t, req)
	if st != http.StatusOK {
		t.Fatalf("SendMessage: %d %s", st, answer)
	}
	if ce := h.Get("Content-Encoding"); ce != "" {
		t.Errorf("answer with Content-Encoding %q", ce)
	}
	var out struct{ MessageId, MD5OfMessageBody string }
	if err := json.Unmarshal([]byte(answer), &out); err != nil || out.MessageId == "" {
		t.Fatalf("the answer is not the service's JSON: %v: %q", err, answer)
	}
	var msg struct{ MessageBody string }
	json.Unmarshal([]byte(body), &msg)
	if out.MD5OfMessageBody != md5hex(msg.MessageBody) {
		t.Errorf("MD5OfMessageBody %q, want %q", out.MD5OfMessageBody, md5hex(msg.MessageBody))
	}
	_, headers := up.seen()
	if len(headers) <= from {
		t.Fatal("nothing reached upstream")
	}
	for _, hh := range headers[from:] {
		if v := hh.Get("Accept-Encoding"); v != "" {
			t.Errorf("the client's Accept-Encoding %q reached the upstream", v)
		}
	}
	if n := len(tp.rec.withTags("direction:out", "topic:trap-gzip")); n != 1 {
		t.Errorf("%d produce checkpoints, want 1", n)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}

// TestTrapJSONReceiveWildcard (2.2): a JSON consumer asking for `.*` (every attribute) gets
// `_datadog` as SQS stored it and an MD5 over what it received, as with All.
func TestTrapJSONReceiveWildcard(t *testing.T) {
	tp, up, cl, qurl, ctx := sqsSetup(t, "trap-wild", nil)
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: awssdk.String("w"),
		MessageAttributes: map[string]types.MessageAttributeValue{"tenant": strAttr("acme")}}); err != nil {
		t.Fatal(err)
	}
	got := receiveAll(ctx, t, cl, qurl, 1, []string{".*"})
	m := got[0]
	dd, ok := m.MessageAttributes[ddAttr]
	if !ok || m.MessageAttributes["tenant"].StringValue == nil {
		t.Fatalf(".* returned %v, want tenant and %s", keysOf(m.MessageAttributes), ddAttr)
	}
	prod := tp.rec.withTags("direction:out", "topic:trap-wild")
	if c := contextFromCarrier([]byte(awssdk.ToString(dd.StringValue))); len(prod) != 1 || c.Hash != prod[0].Hash {
		t.Errorf("%s carries hash %d; produce points %+v", ddAttr, c.Hash, prod)
	}
	if w := attributesMD5(sdkAttrs(m.MessageAttributes)); awssdk.ToString(m.MD5OfMessageAttributes) != w {
		t.Errorf("MD5OfMessageAttributes %q, want %q", awssdk.ToString(m.MD5OfMessageAttributes), w)
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}
