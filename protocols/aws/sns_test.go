package aws

import (
	"context"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// TestSNSFanOutToSQS publishes through the proxy to fauxqs, which fans out to one raw and one
// non-raw SQS subscription; consumers reading through the proxy chain to the publish checkpoints.
// snsClient is aws-sdk-go-v2's SNS client (Query protocol) for endpoint, signing with the test's
// keys, with an app id when appID is not empty.
func snsClient(endpoint, appID string) *sns.Client {
	return sns.New(sns.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(endpoint),
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""), AppID: appID})
}

func TestSNSFanOutToSQS(t *testing.T) {
	up := snsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sn := snsClient(tp.url, "publisher")
	sq := sqsClient(tp.url, testKey, testSecret)

	topic, err := sn.CreateTopic(ctx, &sns.CreateTopicInput{Name: awssdk.String("events")})
	if err != nil {
		t.Fatalf("CreateTopic through proxy: %v", err)
	}
	queues := map[string]string{}
	for _, q := range []string{"raw", "wrapped"} {
		cq, err := sq.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(q)})
		if err != nil {
			t.Fatalf("CreateQueue %s: %v", q, err)
		}
		if !strings.HasPrefix(*cq.QueueUrl, tp.url+"/") {
			t.Errorf("queue URL %s does not point at the proxy", *cq.QueueUrl)
		}
		queues[q] = *cq.QueueUrl
		qa, err := sq.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: cq.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{"QueueArn"}})
		if err != nil {
			t.Fatalf("GetQueueAttributes %s (URL mapped back to upstream): %v", q, err)
		}
		attrs := map[string]string{}
		if q == "raw" {
			attrs["RawMessageDelivery"] = "true"
		}
		if _, err := sn.Subscribe(ctx, &sns.SubscribeInput{TopicArn: topic.TopicArn, Protocol: awssdk.String("sqs"),
			Endpoint: awssdk.String(qa.Attributes["QueueArn"]), Attributes: attrs}); err != nil {
			t.Fatalf("Subscribe %s: %v", q, err)
		}
	}
	if _, err := sn.Publish(ctx, &sns.PublishInput{TopicArn: topic.TopicArn, Message: awssdk.String("hello"),
		MessageAttributes: map[string]snstypes.MessageAttributeValue{"kind": {DataType: awssdk.String("String"), StringValue: awssdk.String("greeting")}}}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	pb, err := sn.PublishBatch(ctx, &sns.PublishBatchInput{TopicArn: topic.TopicArn, PublishBatchRequestEntries: []snstypes.PublishBatchRequestEntry{
		{Id: awssdk.String("e1"), Message: awssdk.String("batch one")},
		{Id: awssdk.String("e2"), Message: awssdk.String("batch two")},
	}})
	if err != nil || len(pb.Successful) != 2 {
		t.Fatalf("PublishBatch: %v %+v", err, pb)
	}
	prod := tp.rec.withTags("direction:out", "topic:events", "type:sns")
	if len(prod) != 3 {
		t.Fatalf("%d publish points, want 3", len(prod))
	}
	hashes := map[uint64]bool{}
	for _, p := range prod {
		hashes[p.Hash] = true
		if p.Service != "publisher" {
			t.Errorf("publish service %q", p.Service)
		}
	}
	for q, u := range queues {
		got := receiveAll(ctx, t, sq, u, 3, []string{"kind"})
		for _, m := range got {
			if _, ok := m.MessageAttributes[ddAttr]; ok {
				t.Errorf("%s: _datadog leaked to the consumer", q)
			}
			if q == "raw" && awssdk.ToString(m.MD5OfMessageAttributes) != attributesMD5(sdkAttrs(m.MessageAttributes)) {
				t.Errorf("%s: MD5OfMessageAttributes %v over %v", q, awssdk.ToString(m.MD5OfMessageAttributes), m.MessageAttributes)
			}
		}
		cons := tp.rec.withTags("direction:in", "topic:"+q, "type:sqs")
		if len(cons) != 3 {
			t.Errorf("%s: %d consume points, want 3", q, len(cons))
		}
		for _, c := range cons {
			if !hashes[c.ParentHash] {
				t.Errorf("%s: consume parent %d is not a publish checkpoint", q, c.ParentHash)
			}
		}
	}
	if bad := up.failures(); len(bad) > 0 {
		t.Fatalf("upstream signature failures: %v", bad)
	}
}
