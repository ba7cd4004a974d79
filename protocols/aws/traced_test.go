package aws

import (
	"bytes"
	"regexp"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// tracedRule calls the clients with app id traced-reader traced: their own tracer checkpoints
// what they consume.
func tracedRule(c *Config) {
	c.Services = &proxy.Services{Default: "default-svc", Rules: []proxy.ServiceRule{
		{Traced: true, ClientID: regexp.MustCompile(`^traced-reader$`)},
	}}
}

// TestTracedSQSConsumerNotCheckpointed: an SQS consumer a services rule calls traced gets no
// consume checkpoint from the proxy, and gets `_datadog` when it asks for it, as a tracer does;
// an untraced consumer of the same kind of messages is checkpointed as before.
func TestTracedSQSConsumerNotCheckpointed(t *testing.T) {
	tp, _, cl, tracedURL, ctx := sqsSetup(t, "traced-q", tracedRule)
	cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("plain-q")})
	if err != nil {
		t.Fatal(err)
	}
	plainURL := *cq.QueueUrl
	const n = 4
	for _, q := range []string{tracedURL, plainURL} {
		for range n {
			if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &q, MessageBody: awssdk.String("m")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	traced := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url), AppID: "traced-reader",
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, "")})
	plain := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url), AppID: "plain-reader",
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, "")})
	receive := func(c *sqs.Client, q string) {
		t.Helper()
		for got := 0; got < n; {
			out, err := c.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &q, MaxNumberOfMessages: 10,
				MessageAttributeNames: []string{ddAttr}})
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range out.Messages {
				got++
				if _, ok := m.MessageAttributes[ddAttr]; !ok {
					t.Errorf("a message came without %s", ddAttr)
				}
			}
		}
	}
	receive(traced, tracedURL)
	receive(plain, plainURL)
	if cons := tp.rec.withTags("direction:in", "topic:plain-q"); len(cons) != n {
		t.Errorf("plain reader: %d consume checkpoints, want %d", len(cons), n)
	}
	if cons := tp.rec.withTags("direction:in", "topic:traced-q"); len(cons) != 0 {
		t.Errorf("traced reader: %d consume checkpoints, want none (its tracer takes them)", len(cons))
	}
}

// TestTracedKinesisConsumerKeepsTheContext: a Kinesis consumer a services rule calls traced gets
// no consume checkpoint from the proxy and gets the record's data with the `_datadog` the
// producer's proxy added, which its tracer reads as it reads a traced producer's; an untraced
// consumer gets the data as produced, and a consume checkpoint.
func TestTracedKinesisConsumerKeepsTheContext(t *testing.T) {
	tp, _, kc, ctx := kinesisSetup(t, "traced-stream", func(c *Config) { c.KinesisInjectData = true; tracedRule(c) })
	stream := awssdk.String("traced-stream")
	data := []byte(`{"n":1}`)
	if _, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: data, PartitionKey: awssdk.String("k")}); err != nil {
		t.Fatal(err)
	}
	traced := kinesis.New(kinesis.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url), AppID: "traced-reader",
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, "")})
	recs := readShard(t, ctx, traced, stream, 1)
	if !bytes.Contains(recs[0].Data, []byte(`"_datadog":{"`+pathway.HeaderKey+`":`)) {
		t.Errorf("traced reader got %s, want the data with the proxy's _datadog", recs[0].Data)
	}
	if cons := tp.rec.withTags("direction:in", "topic:traced-stream"); len(cons) != 0 {
		t.Errorf("traced reader: %d consume checkpoints, want none", len(cons))
	}
	recs = readShard(t, ctx, kc, stream, 1) // app id clicks: not traced
	if !bytes.Equal(recs[0].Data, data) {
		t.Errorf("untraced reader got %s, want %s", recs[0].Data, data)
	}
	if cons := tp.rec.withTags("direction:in", "topic:traced-stream"); len(cons) != 1 {
		t.Errorf("untraced reader: %d consume checkpoints, want 1", len(cons))
	}
}
