package aws

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
)

// A `_datadog` the application wrote that is no trace carrier (not a JSON object with members:
// a string, null, an array, an empty object) is the application's own data: the proxy cannot
// merge its context into it, and replacing it would lose the application's value (and, in
// Kinesis, the consumer's read through the proxy would drop the member the proxy took for its
// own). Such a message goes as sent, with its produce checkpoint, and counts as a skip.

// foreignDatadogs are `_datadog` values no tracer writes.
var foreignDatadogs = []string{`"abc"`, `null`, `{}`, `[1]`, `7`}

// countSkips returns the records of the proxy_skip events by name.
func countSkips(tp *testProxy) map[string]int {
	got := map[string]int{}
	for _, ev := range tp.ev.all() {
		if ev.Category == errtrack.ProxySkip {
			got[ev.Name] += ev.Messages
		}
	}
	return got
}

// TestKinesisForeignDatadogMember: record data whose `_datadog` member is no trace carrier goes
// to the stream as the producer wrote it, and consumers, through the proxy or not, read it so.
func TestKinesisForeignDatadogMember(t *testing.T) {
	tp, up, kc, ctx := kinesisSetup(t, "foreign", func(c *Config) { c.KinesisInjectData = true })
	stream := awssdk.String("foreign")
	var want [][]byte
	for i, v := range foreignDatadogs {
		data := []byte(fmt.Sprintf(`{"_datadog":%s,"n":%d}`, v, i))
		want = append(want, data)
		if _, err := kc.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: data, PartitionKey: awssdk.String("p")}); err != nil {
			t.Fatalf("PutRecord %s: %v", data, err)
		}
	}
	for i, r := range readShard(t, ctx, kc, stream, len(want)) {
		if !bytes.Equal(r.Data, want[i]) {
			t.Errorf("read through the proxy: %s, want the producer's %s", r.Data, want[i])
		}
	}
	direct := kinesisClient(up.URL())
	for i, r := range readShard(t, ctx, direct, stream, len(want)) {
		if !bytes.Equal(r.Data, want[i]) {
			t.Errorf("in the stream: %s, want the producer's %s", r.Data, want[i])
		}
	}
	if got := countSkips(tp); got["datadog_not_carrier"] != len(want) || len(got) != 1 {
		t.Errorf("skips %v, want %d datadog_not_carrier", got, len(want))
	}
	if n := len(tp.rec.withTags("direction:out", "topic:foreign")); n != len(want) {
		t.Errorf("%d produce checkpoints, want %d", n, len(want))
	}
}

// TestSNSForeignDatadogAttribute: a message whose `_datadog` attribute holds no trace carrier
// reaches SNS, and a raw subscription's queue, with the publisher's attribute as it was.
func TestSNSForeignDatadogAttribute(t *testing.T) {
	up := snsPeer(t)
	tp := startProxy(t, func(c *Config) { c.Upstream = up.URL() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sn := snsClient(tp.url, "publisher")
	sq := sqsClient(tp.url, testKey, testSecret)
	topic, err := sn.CreateTopic(ctx, &sns.CreateTopicInput{Name: awssdk.String("foreign")})
	if err != nil {
		t.Fatal(err)
	}
	cq, err := sq.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("foreign-raw")})
	if err != nil {
		t.Fatal(err)
	}
	qa, err := sq.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: cq.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{"QueueArn"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Subscribe(ctx, &sns.SubscribeInput{TopicArn: topic.TopicArn, Protocol: awssdk.String("sqs"),
		Endpoint: awssdk.String(qa.Attributes["QueueArn"]), Attributes: map[string]string{"RawMessageDelivery": "true"}}); err != nil {
		t.Fatal(err)
	}
	from := up.count()
	for _, v := range foreignDatadogs {
		if _, err := sn.Publish(ctx, &sns.PublishInput{TopicArn: topic.TopicArn, Message: awssdk.String(v),
			MessageAttributes: map[string]snstypes.MessageAttributeValue{ddAttr: snsStrAttr(v)}}); err != nil {
			t.Fatalf("Publish with _datadog %s: %v", v, err)
		}
	}
	for _, b := range snsUpBodies(up, from) {
		vals, err := url.ParseQuery(b)
		if err != nil || vals.Get("Action") != "Publish" {
			continue
		}
		if a := snsFormAttrs(vals, "MessageAttributes.entry."); len(a) != 1 || a[0].dataType != "String" || a[0].stringValue != vals.Get("Message") {
			t.Errorf("upstream attributes %+v, want the publisher's String _datadog %s", a, vals.Get("Message"))
		}
	}
	got := receiveAll(ctx, t, sq, *cq.QueueUrl, len(foreignDatadogs), []string{"All"})
	for _, m := range got {
		if v := m.MessageAttributes[ddAttr]; awssdk.ToString(v.DataType) != "String" || awssdk.ToString(v.StringValue) != awssdk.ToString(m.Body) {
			t.Errorf("delivered _datadog %s %q, want the publisher's String %s", awssdk.ToString(v.DataType), awssdk.ToString(v.StringValue), awssdk.ToString(m.Body))
		}
	}
	if s := countSkips(tp); s["datadog_not_carrier"] != len(foreignDatadogs) {
		t.Errorf("skips %v, want %d datadog_not_carrier", s, len(foreignDatadogs))
	}
	if n := len(tp.rec.withTags("direction:out", "topic:foreign", "type:sns")); n != len(foreignDatadogs) {
		t.Errorf("%d produce checkpoints, want %d", n, len(foreignDatadogs))
	}
}
