package aws

import (
	"net/http"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestSQSMissingQueueLost: sends refused by the service (the queue does not exist) are a broker
// error and lost messages on the queue's edge, counted per message, in both wire forms.
func TestSQSMissingQueueLost(t *testing.T) {
	tp, _, cl, qurl, ctx := sqsSetup(t, "present", nil)
	missing := strings.TrimSuffix(qurl, "present") + "absent"
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &missing, MessageBody: awssdk.String("nowhere")}); err == nil {
		t.Fatal("SendMessage to a missing queue succeeded")
	}
	entries := []types.SendMessageBatchRequestEntry{
		{Id: awssdk.String("a"), MessageBody: awssdk.String("1")},
		{Id: awssdk.String("b"), MessageBody: awssdk.String("2")},
		{Id: awssdk.String("c"), MessageBody: awssdk.String("3")},
	}
	if _, err := cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &missing, Entries: entries}); err == nil {
		t.Fatal("SendMessageBatch to a missing queue succeeded")
	}
	if _, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &missing}); err == nil {
		t.Fatal("ReceiveMessage from a missing queue succeeded")
	}

	tp.ev.mu.Lock()
	evs := append([]errtrack.Event(nil), tp.ev.ev...)
	tp.ev.mu.Unlock()
	type key struct {
		cat errtrack.Category
		op  string
	}
	got := map[key]errtrack.Event{}
	for _, e := range evs {
		got[key{e.Category, e.Operation}] = e
	}
	for _, want := range []struct {
		cat      errtrack.Category
		op       string
		dir      string
		messages int
		absent   bool
	}{
		{errtrack.BrokerError, "SendMessage", "out", 1, false},
		{errtrack.LostMessage, "SendMessage", "out", 1, false},
		{errtrack.BrokerError, "SendMessageBatch", "out", 3, false},
		{errtrack.LostMessage, "SendMessageBatch", "out", 3, false},
		{errtrack.BrokerError, "ReceiveMessage", "in", 0, false},
		{errtrack.LostMessage, "ReceiveMessage", "", 0, true},
	} {
		e, ok := got[key{want.cat, want.op}]
		if want.absent {
			if ok {
				t.Errorf("%s %s reported: %+v", want.cat, want.op, e)
			}
			continue
		}
		if !ok {
			t.Errorf("no %s event for %s; events: %+v", want.cat, want.op, evs)
			continue
		}
		if e.Edge.Topic != "absent" || string(e.Edge.Direction) != want.dir || e.Messages != want.messages {
			t.Errorf("%s %s: edge %+v, %d messages; want topic absent, direction %s, %d messages", want.cat, want.op, e.Edge, e.Messages, want.dir, want.messages)
		}
		if e.Name != "AWS.SimpleQueueService.NonExistentQueue" {
			t.Errorf("%s %s: error name %q", want.cat, want.op, e.Name)
		}
	}
}

// TestSQSLongPollEdgeLatency: a message sent while a long-polled ReceiveMessage waits is consumed
// when the answer comes, not when the request arrived, so its edge latency is not clamped to 0.
func TestSQSLongPollEdgeLatency(t *testing.T) {
	tp, _, cl, qurl, ctx := sqsSetup(t, "longpoll", nil)
	got := make(chan error, 1)
	go func() {
		out, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &qurl, WaitTimeSeconds: 10})
		if err == nil && len(out.Messages) != 1 {
			err = errNoMessage
		}
		got <- err
	}()
	// Give the receive a head start so it is waiting when the message arrives; if it is late,
	// the test only gets weaker.
	time.Sleep(500 * time.Millisecond)
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: awssdk.String("while you wait")}); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("long-polled receive: %v", err)
	}
	in := tp.rec.withTags("direction:in", "topic:longpoll")
	if len(in) != 1 {
		t.Fatalf("%d consume checkpoints, want 1", len(in))
	}
	if in[0].EdgeLatency <= 0 {
		t.Errorf("edge latency %d ns: the consume checkpoint was stamped before the message was sent", in[0].EdgeLatency)
	}
}

var errNoMessage = errorString("long poll returned no message")

type errorString string

func (e errorString) Error() string { return string(e) }

// TestErrorCode reads the code and message of each error shape an upstream may answer with. SQS
// codes come out as Query names them, over either wire form.
func TestErrorCode(t *testing.T) {
	const sqsMissing = `{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"gone"}`
	for _, tc := range []struct {
		name, service, body, header, hval, code, msg string
	}{
		{"json 1.0", ServiceSQS, `{"__type":"com.amazon.coral.service#AWS.SimpleQueueService.NonExistentQueue","message":"gone"}`, "", "", "AWS.SimpleQueueService.NonExistentQueue", "gone"},
		{"json 1.1", ServiceKinesis, `{"__type":"ResourceNotFoundException","message":"no stream"}`, "", "", "ResourceNotFoundException", "no stream"},
		{"query header wins over nothing", ServiceSQS, `{"message":"m"}`, "X-Amzn-Query-Error", "ReceiptHandleIsInvalid;Sender", "ReceiptHandleIsInvalid", "m"},
		{"sqs query header wins over __type", ServiceSQS, sqsMissing, "X-Amzn-Query-Error", "AWS.SimpleQueueService.NonExistentQueue;Sender", "AWS.SimpleQueueService.NonExistentQueue", "gone"},
		{"sqs query header names what no table lists", ServiceSQS, `{"__type":"com.amazonaws.sqs#SomeNewError","message":"m"}`, "X-Amzn-Query-Error", "AWS.SimpleQueueService.SomeNewError;Receiver", "AWS.SimpleQueueService.SomeNewError", "m"},
		{"sqs __type without the header", ServiceSQS, sqsMissing, "", "", "AWS.SimpleQueueService.NonExistentQueue", "gone"},
		{"sqs common error without the header", ServiceSQS, `{"__type":"com.amazon.coral.service#InvalidParameterValueException","message":"too long"}`, "", "", "InvalidParameterValue", "too long"},
		{"sqs name the same in both", ServiceSQS, `{"__type":"com.amazonaws.sqs#ReceiptHandleIsInvalid","message":"bad"}`, "", "", "ReceiptHandleIsInvalid", "bad"},
		{"not sqs: __type as it is", ServiceKinesis, `{"__type":"QueueDoesNotExist","message":"m"}`, "", "", "QueueDoesNotExist", "m"},
		{"error type header", ServiceKinesis, `{}`, "X-Amzn-Errortype", "ThrottlingException:http://internal", "ThrottlingException", ""},
		{"goaws json", ServiceSQS, `{"Type":"Not Found","Code":"AWS.SimpleQueueService.NonExistentQueue","Message":"The specified queue does not exist for this wsdl version."}`, "", "", "AWS.SimpleQueueService.NonExistentQueue", "The specified queue does not exist for this wsdl version."},
		{"xml", ServiceSQS, `<?xml version="1.0"?><ErrorResponse><Error><Type>Sender</Type><Code>InvalidParameterValue</Code><Message>bad</Message></Error></ErrorResponse>`, "", "", "InvalidParameterValue", "bad"},
		{"garbage", ServiceSQS, `<<<`, "", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := &http.Response{Header: http.Header{}}
			if tc.header != "" {
				resp.Header.Set(tc.header, tc.hval)
			}
			code, msg := errorCode(tc.service, resp, []byte(tc.body))
			if code != tc.code || msg != tc.msg {
				t.Errorf("got %q, %q; want %q, %q", code, msg, tc.code, tc.msg)
			}
		})
	}
}

// TestKinesisPutRecordsFailedRecords: kinesis-local never fails a single record, so the
// PutRecords answer AWS documents for a partial failure (FailedRecordCount and per-record
// ErrorCode) is fed to the response handler: the failed record is a lost message on the stream's
// edge and the others are produce checkpoints.
func TestKinesisPutRecordsFailedRecords(t *testing.T) {
	tp := startProxy(t, nil)
	req := `{"StreamName":"clicks","Records":[{"Data":"YQ==","PartitionKey":"k1"},{"Data":"Yg==","PartitionKey":"k2"},{"Data":"Yw==","PartitionKey":"k3"}]}`
	c := &call{wire: wireJSON11, service: ServiceKinesis, op: "PutRecords", body: []byte(req), svcName: "clicker", now: time.Now()}
	_, fix, err := tp.kinesisJSON(c)
	if err != nil || fix == nil {
		t.Fatalf("kinesisJSON: fix %v, err %v", fix != nil, err)
	}
	resp := `{"FailedRecordCount":1,"Records":[{"SequenceNumber":"1","ShardId":"shardId-000000000000"},` +
		`{"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate exceeded for shard shardId-000000000000"},` +
		`{"SequenceNumber":"2","ShardId":"shardId-000000000000"}]}`
	fix([]byte(resp))
	evs := tp.ev.named("ProvisionedThroughputExceededException")
	if len(evs) != 1 || evs[0].Category != errtrack.LostMessage || evs[0].Edge.Topic != "clicks" || evs[0].Messages != 1 ||
		!strings.Contains(evs[0].Message, "record 1") || evs[0].Service != "clicker" {
		t.Fatalf("failed record events: %+v", evs)
	}
	if n := len(tp.rec.withTags("direction:out", "topic:clicks", "type:kinesis")); n != 2 {
		t.Errorf("%d produce checkpoints, want 2 (the records that went in)", n)
	}
}

// TestUnnamedUpstreamErrorNamedByStatus: an upstream error with no AWS shape (a load balancer's
// HTML 502) is tracked under its HTTP status, not under an empty name.
func TestUnnamedUpstreamErrorNamedByStatus(t *testing.T) {
	tp := startProxy(t, nil)
	edge := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSQS, Topic: "orders"}
	c := &call{service: ServiceSQS, op: "SendMessage", svcName: "checkout", now: time.Now(), edge: edge, sent: 1}
	resp := &http.Response{StatusCode: http.StatusBadGateway, Header: http.Header{"Content-Type": {"text/html"}}}
	tp.reportUpstreamError(c, resp, []byte("<html><body><h1>502 Bad Gateway</h1></body></html>"))
	evs := tp.ev.all()
	if len(evs) != 1 {
		t.Fatalf("%d events, want the retriable broker error alone: %+v", len(evs), evs)
	}
	if ev := evs[0]; ev.Name != "HTTP 502" || ev.Message != "Bad Gateway" || !ev.Retriable || ev.Edge.Topic != "orders" {
		t.Errorf("event %q %q retriable %v on %v; want HTTP 502, Bad Gateway, retriable, on orders", ev.Name, ev.Message, ev.Retriable, ev.Edge)
	}
}
