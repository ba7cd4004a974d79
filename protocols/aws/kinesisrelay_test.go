package aws

import (
	"bytes"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// TestKinesisRelayFromSQS: a worker without a tracer that receives SQS messages and puts each
// into a Kinesis stream with the `_datadog` it was handed as a member of the record's JSON (the
// shape a tracer writes) sends a context the proxy handed it, no tracer's, as a relay between two
// SQS queues does: its put is checkpointed with its receive as the parent, and the stream's
// consumer follows the put. Found driving SQS -> Kinesis through one front with the AWS CLI: the
// put got no checkpoint, and the Kinesis consume's parent was the SQS send.
func TestKinesisRelayFromSQS(t *testing.T) {
	sq := sqsPeer(t)
	tp, _, kc, ctx := kinesisSetup(t, "relayed", func(c *Config) {
		c.Upstreams = map[string]string{ServiceSQS: sq.URL()}
		c.KinesisInjectData = true
	})
	cl := sqsClient(tp.url, testKey, testSecret) // service orders-api; kc's is clicks
	stream := awssdk.String("relayed")
	q, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String("to-kinesis")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: q.QueueUrl, MessageBody: awssdk.String("order 1")}); err != nil {
		t.Fatal(err)
	}
	var got []types.Message
	for len(got) == 0 && ctx.Err() == nil {
		rm, err := cl.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: q.QueueUrl, MessageAttributeNames: []string{"All"}, WaitTimeSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		got = rm.Messages
	}
	dd, ok := got[0].MessageAttributes["_datadog"]
	if !ok || dd.StringValue == nil {
		t.Fatalf("the message came without _datadog: %+v", got[0].MessageAttributes)
	}
	// The relay puts with the SQS client's app id: one service, as one worker's two clients.
	relay := kinesis.New(kinesis.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url), Credentials: cl.Options().Credentials, AppID: "orders-api"})
	data := []byte(`{"order":1,"_datadog":` + *dd.StringValue + `}`)
	if _, err := relay.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: stream, Data: data, PartitionKey: awssdk.String("k")}); err != nil {
		t.Fatal(err)
	}
	recs := readShard(t, ctx, kc, stream, 1)
	if want := []byte(`{"order":1}`); !bytes.Equal(recs[0].Data, want) {
		t.Errorf("the stream's consumer got %s, want %s (the proxy's _datadog taken out)", recs[0].Data, want)
	}

	recv := tp.rec.withTags("direction:in", "topic:to-kinesis", "type:sqs")
	put := tp.rec.withTags("direction:out", "topic:relayed", "type:kinesis")
	read := tp.rec.withTags("direction:in", "topic:relayed", "type:kinesis")
	if len(recv) != 1 || len(put) != 1 || len(read) != 1 {
		t.Fatalf("%d receive, %d put and %d read checkpoints, want 1 each (stats %+v)", len(recv), len(put), len(read), tp.Stats())
	}
	if put[0].Service != "orders-api" || put[0].ParentHash != recv[0].Hash {
		t.Errorf("the relay's put: service %s, parent %x; want orders-api and its receive %x", put[0].Service, put[0].ParentHash, recv[0].Hash)
	}
	if read[0].ParentHash != put[0].Hash {
		t.Errorf("the stream's consume has parent %x, want the relay's put %x", read[0].ParentHash, put[0].Hash)
	}
}
