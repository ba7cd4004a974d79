package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/internal/agenttest"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestRelayAcrossProtocols: a pipeline through one proxy whose services copy the pathway context
// they were handed onto what they send next, each on another protocol (a bridge from Kafka to
// RabbitMQ, a mover from RabbitMQ to SQS). A context the proxy handed a consumer is no tracer's,
// whichever front handed it: each send is that service's next hop, with its consume as parent,
// and the next consumer's parent is that send. (Found driving such a pipeline with kafka-python,
// pika, amqp091-go and aws-sdk-go-v2: the copied context was taken for a tracer's, the sends got
// no checkpoint, and the RabbitMQ and SQS consumes both named the Kafka produce as their parent.)
func TestRelayAcrossProtocols(t *testing.T) {
	agent := agenttest.New(t)
	_, _, front := startThreeFronts(t, func(c *Config) {
		c.Agent.Disabled = false
		c.Agent.URL = agent.URL()
		c.Agent.FlushInterval = Duration(time.Second)
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	suffix := fmt.Sprint(time.Now().UnixNano())
	topic, queue, sqsQueue := "relay-in-"+suffix, "dsmproxy-test-relay-"+suffix, "relay-out-"+suffix
	const n = 3
	hops := []struct {
		what    string
		service string
		tags    []string
	}{
		{"src's produce", "relay-src", []string{"direction:out", "topic:" + topic, "type:kafka"}},
		{"bridge's consume", "bridge", []string{"direction:in", "group:bridge-group", "topic:" + topic, "type:kafka"}},
		{"bridge's publish", "bridge", []string{"direction:out", "topic:" + queue, "type:rabbitmq"}},
		{"mover's consume", "mover", []string{"direction:in", "topic:" + queue, "type:rabbitmq"}},
		{"mover's send", "mover", []string{"direction:out", "topic:" + sqsQueue, "type:sqs"}},
		{"sink's receive", "sink", []string{"direction:in", "topic:" + sqsQueue, "type:sqs"}},
	}

	// src produces to Kafka; the proxy gives each record its context.
	src, err := kgo.NewClient(kgo.SeedBrokers(front["kafka"]), kgo.ClientID("relay-src"), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for i := range n {
		if err := src.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: fmt.Appendf(nil, "m%d", i)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}

	// bridge consumes it and publishes each record to RabbitMQ with the record's context.
	bridgeProps := amqp091.NewConnectionProperties()
	bridgeProps.SetClientConnectionName("bridge")
	bridgeConn, err := amqp091.DialConfig("amqp://guest:guest@"+front["amqp"]+"/", amqp091.Config{Properties: bridgeProps})
	if err != nil {
		t.Fatal(err)
	}
	defer bridgeConn.Close()
	bch, err := bridgeConn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bch.QueueDeclare(queue, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	defer bch.QueueDelete(queue, false, false, false)
	bridge, err := kgo.NewClient(kgo.SeedBrokers(front["kafka"]), kgo.ClientID("bridge"), kgo.ConsumerGroup("bridge-group"),
		kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer bridge.Close()
	var records []*kgo.Record
	for len(records) < n {
		fs := bridge.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("bridge got %d of %d records: %v", len(records), n, err)
		}
		records = append(records, fs.Records()...)
	}
	// The proxy observes what it relays just after the client has it: a send that beat that
	// would be taken for a tracer's (README). Sent once the consume checkpoints are in.
	waitOnEdge(t, agent, n, hops[1].tags)
	for _, r := range records {
		headers := amqp091.Table{}
		for _, h := range r.Headers {
			if h.Key == pathway.HeaderKey {
				headers[h.Key] = string(h.Value)
			}
		}
		if len(headers) == 0 {
			t.Errorf("record %s came without %s", r.Value, pathway.HeaderKey)
		}
		if err := bch.PublishWithContext(ctx, "", queue, false, false, amqp091.Publishing{Headers: headers, Body: r.Value}); err != nil {
			t.Fatal(err)
		}
	}

	// mover consumes the queue and sends each message to SQS with the delivery's context.
	moverProps := amqp091.NewConnectionProperties()
	moverProps.SetClientConnectionName("mover")
	moverConn, err := amqp091.DialConfig("amqp://guest:guest@"+front["amqp"]+"/", amqp091.Config{Properties: moverProps})
	if err != nil {
		t.Fatal(err)
	}
	defer moverConn.Close()
	mch, err := moverConn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	dels, err := mch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	sqsClient := func(app string) *sqs.Client {
		return sqs.NewFromConfig(awssdk.Config{Region: "us-east-1", AppID: app, Credentials: credentials.NewStaticCredentialsProvider("client", "client", "")},
			func(o *sqs.Options) { o.BaseEndpoint = awssdk.String("http://" + front["aws"]) })
	}
	mover := sqsClient("mover")
	q, err := mover.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: &sqsQueue})
	if err != nil {
		t.Fatal(err)
	}
	var deliveries []amqp091.Delivery
	for range n {
		select {
		case d := <-dels:
			deliveries = append(deliveries, d)
		case <-ctx.Done():
			t.Fatal("mover: no delivery")
		}
	}
	waitOnEdge(t, agent, n, hops[3].tags)
	for _, d := range deliveries {
		in := &sqs.SendMessageInput{QueueUrl: q.QueueUrl, MessageBody: awssdk.String(string(d.Body))}
		if v, ok := d.Headers[pathway.HeaderKey].(string); ok {
			in.MessageAttributes = map[string]sqstypes.MessageAttributeValue{"_datadog": {DataType: awssdk.String("String"),
				StringValue: awssdk.String(`{"` + pathway.HeaderKey + `":"` + v + `"}`)}}
		} else {
			t.Errorf("delivery %s came without %s", d.Body, pathway.HeaderKey)
		}
		if _, err := mover.SendMessage(ctx, in); err != nil {
			t.Fatal(err)
		}
	}

	// sink receives them.
	sink := sqsClient("sink")
	for got := 0; got < n; {
		out, err := sink.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: q.QueueUrl, MaxNumberOfMessages: 10,
			MessageAttributeNames: []string{"All"}, WaitTimeSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		got += len(out.Messages)
	}

	waitOnEdge(t, agent, n, hops[len(hops)-1].tags)
	// Points flush a bucket at a time: the earlier hops' are in by the time the last one's are.
	pts := agent.Points()
	nodes := make([]*agenttest.Point, len(hops))
	named := map[uint64]string{0: "none"}
	for i, h := range hops {
		got := onEdge(pts, h.tags)
		if len(got) == 0 {
			t.Errorf("%s: no checkpoint (%s %v)", h.what, h.service, h.tags)
			continue
		}
		node, count := agenttest.OneNode(t, h.what, got)
		nodes[i], named[node.Hash] = &node, h.what
		if node.Service != h.service {
			t.Errorf("%s: service %q, want %q", h.what, node.Service, h.service)
		}
		if count != n {
			t.Errorf("%s: %v checkpoints, want %d", h.what, count, n)
		}
	}
	for i := 1; i < len(hops); i++ {
		if nodes[i] == nil {
			continue
		}
		want := "none"
		if nodes[i-1] != nil {
			want = named[nodes[i-1].Hash]
		}
		if got, ok := named[nodes[i].ParentHash]; !ok || got != hops[i-1].what || want != got {
			if !ok {
				got = fmt.Sprintf("%016x, no hop's", nodes[i].ParentHash)
			}
			t.Errorf("%s: parent is %s, want %s", hops[i].what, got, hops[i-1].what)
		}
	}
}

// onEdge is pts's current points of the edge tags names, whatever Kafka cluster id they carry
// (kfake's own).
func onEdge(pts []agenttest.Point, tags []string) []agenttest.Point {
	var out []agenttest.Point
	for _, p := range pts {
		if p.TimestampType != "current" {
			continue
		}
		own := slices.DeleteFunc(slices.Clone(p.EdgeTags), func(s string) bool { return strings.HasPrefix(s, "kafka_cluster_id:") })
		if slices.Equal(own, tags) {
			out = append(out, p)
		}
	}
	return out
}

// waitOnEdge waits until the Agent has n checkpoints on the edge tags names.
func waitOnEdge(t *testing.T, agent *agenttest.Agent, n float64, tags []string) {
	t.Helper()
	agent.WaitFor(t, 30*time.Second, fmt.Sprintf("%v checkpoints on %v", n, tags), func(a *agenttest.Agent) bool {
		var c float64
		for _, p := range onEdge(a.Points(), tags) {
			c += p.Count()
		}
		return c >= n
	})
}
