package aws

import (
	"bytes"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/dsmproxy/dsmproxy/pathway"
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

// TestKinesisRelayOfATracersRecord: a worker without a tracer reads, through the proxy, a record
// a traced producer wrote (its `_datadog` holds trace ids beside the pathway context, so the proxy
// leaves it in the data) and puts the data as it is into another stream. The context it sends on
// is one the proxy handed it, no tracer's: its put is checkpointed with its read as the parent,
// and the second stream's consumer follows the put, as for a relay from SQS.
func TestKinesisRelayOfATracersRecord(t *testing.T) {
	tp, up, kc, ctx := kinesisSetup(t, "traced-in", func(c *Config) { c.KinesisInjectData = true })
	onward := awssdk.String("relayed-on")
	if _, err := kc.CreateStream(ctx, &kinesis.CreateStreamInput{StreamName: onward, ShardCount: awssdk.Int32(1)}); err != nil {
		t.Fatal(err)
	}
	w := kinesis.NewStreamExistsWaiter(kc, func(o *kinesis.StreamExistsWaiterOptions) { o.MinDelay, o.MaxDelay = 100*time.Millisecond, time.Second })
	if err := w.Wait(ctx, &kinesis.DescribeStreamInput{StreamName: onward}, time.Minute); err != nil {
		t.Fatal(err)
	}
	// What dd-trace-go writes: its trace carrier with the pathway context, straight to the stream.
	now := time.Now()
	tracer := pathway.Context{Hash: 0x1234567890abcdef, PathwayStart: now.Add(-time.Second), EdgeStart: now.Add(-time.Second)}
	data := []byte(`{"order":1,"_datadog":{"x-datadog-trace-id":"42","x-datadog-parent-id":"7","` + pathway.HeaderKey + `":"` + tracer.String() + `"}}`)
	in := awssdk.String("traced-in")
	if _, err := kinesisClient(up.URL()).PutRecord(ctx, &kinesis.PutRecordInput{StreamName: in, Data: data, PartitionKey: awssdk.String("k")}); err != nil {
		t.Fatal(err)
	}
	relay := kinesis.New(kinesis.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(tp.url),
		Credentials: credentials.NewStaticCredentialsProvider(testKey, testSecret, ""), AppID: "relay"})
	got := readShard(t, ctx, relay, in, 1)[0].Data
	if !bytes.Equal(got, data) {
		t.Fatalf("the relay read %s, want the tracer's record as written: %s", got, data)
	}
	if _, err := relay.PutRecord(ctx, &kinesis.PutRecordInput{StreamName: onward, Data: got, PartitionKey: awssdk.String("k")}); err != nil {
		t.Fatal(err)
	}
	readShard(t, ctx, kc, onward, 1)

	read := tp.rec.withTags("direction:in", "topic:traced-in", "type:kinesis")
	put := tp.rec.withTags("direction:out", "topic:relayed-on", "type:kinesis")
	next := tp.rec.withTags("direction:in", "topic:relayed-on", "type:kinesis")
	if len(read) != 1 || len(put) != 1 || len(next) != 1 {
		t.Fatalf("%d read, %d put and %d next read checkpoints, want 1 each (stats %+v)", len(read), len(put), len(next), tp.Stats())
	}
	if read[0].ParentHash != tracer.Hash {
		t.Errorf("the relay's read has parent %x, want the tracer's %x", read[0].ParentHash, tracer.Hash)
	}
	if put[0].Service != "relay" || put[0].ParentHash != read[0].Hash {
		t.Errorf("the relay's put: service %s, parent %x; want relay and its read %x", put[0].Service, put[0].ParentHash, read[0].Hash)
	}
	if next[0].ParentHash != put[0].Hash {
		t.Errorf("the next stream's consume has parent %x, want the relay's put %x", next[0].ParentHash, put[0].Hash)
	}
}
