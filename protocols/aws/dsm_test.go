package aws

import (
	"context"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/aggregator"
	"github.com/dsmproxy/dsmproxy/internal/agenttest"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// tee hands points to the recorder and the aggregator.
type tee struct {
	rec *recorder
	agg *aggregator.Aggregator
}

func (t tee) Add(p pathway.Point) bool     { t.rec.Add(p); return t.agg.Add(p) }
func (t tee) Offset(o pathway.Offset) bool { return t.agg.Offset(o) }

// TestSQSDSMThroughAgent: SQS sends and receives through the proxy reach a (strictly decoding)
// fake Datadog Agent through the real aggregator and flusher: the producer's and consumer's points
// carry their services, and the consumer's parent is the producer's hash.
func TestSQSDSMThroughAgent(t *testing.T) {
	agent := agenttest.New(t)
	agg := aggregator.New(aggregator.Config{Env: "test", DefaultService: "dsmproxy"})
	agg.Start()
	t.Cleanup(agg.Close)
	sink, err := aggregator.NewAgentSink(aggregator.AgentConfig{URL: agent.URL(), Env: "test", TracerVersion: "dsmproxy-test", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	flusher := aggregator.NewFlusher(agg, 10*time.Second, zerolog.Nop(), sink)
	rec := &recorder{}
	tp, _, producer, qurl, ctx := sqsSetup(t, "dsmq", func(c *Config) { c.Observer = tee{rec, agg} })
	// An app id set to the pod's name names the service its replicas share (proxy.TrimGenerated).
	consumer := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url),
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""), AppID: "billing-7d9f8b6c4-x2k9p"})
	for _, body := range []string{"a", "b", "c"} {
		if _, err := producer.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &qurl, MessageBody: awssdk.String(body)}); err != nil {
			t.Fatal(err)
		}
	}
	var got int
	for got < 3 && ctx.Err() == nil {
		rm, err := consumer.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: &qurl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		got += len(rm.Messages)
	}
	fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	flusher.FlushNow(fctx, true)
	// The three messages may straddle a 10 s bucket boundary: one pathway node each, in one or two
	// buckets.
	agent.CheckHop(t, 30*time.Second, "orders-api", "billing", 3,
		[]string{"direction:out", "topic:dsmq", "type:sqs"}, []string{"direction:in", "topic:dsmq", "type:sqs"})
	if len(rec.all()) != 6 {
		t.Errorf("%d points recorded, want 6", len(rec.all()))
	}
}
