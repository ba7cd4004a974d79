package pathway

import (
	"slices"
	"testing"
	"time"
)

// TestTracerObservedVectors holds the hashes dd-trace-go v2.12.0 reported to an Agent for SQS,
// SNS, Kinesis and RabbitMQ checkpoints (DD_ENV=prod, DD_EXPERIMENTAL_PROPAGATE_PROCESS_TAGS_ENABLED=false,
// so that its node hash has no process tags, as ours has none), next to the proxy's for the same
// service and edge. Produce tags are those of its aws-sdk-go-v2 integration
// (contrib/aws/aws-sdk-go-v2/internal/sqs/sqs.go, sns/sns.go, kinesis/kinesis.go: direction:out,
// type:<sqs|sns|kinesis>, topic:<queue name, topic name, stream name>). dd-trace-go has no consume
// checkpoint for these, nor any RabbitMQ integration: the in-direction rows and the RabbitMQ
// rows were set through its public API (datastreams.ExtractFromBase64Carrier, then
// tracer.SetDataStreamsCheckpointWithParams) with the tags dd-trace-py writes
// (ddtrace/internal/datastreams/kombu.py, botocore.py: direction:in, topic:<queue|stream>, type:...;
// a publish to a named exchange direction:out, exchange:<x>, has_routing_key:<bool>, type:rabbitmq;
// to the default one direction:out, topic:<routing key>, type:rabbitmq), the parent being the
// context the proxy had injected. A tracer and a proxy naming the same service must give one node,
// so that both feed one pathway.
func TestTracerObservedVectors(t *testing.T) {
	tests := []struct {
		name     string
		service  string
		edge     Edge
		parent   uint64
		wantTags []string
		want     uint64
	}{
		{"sqs send", "orders-api", Edge{Direction: Out, Type: TypeSQS, Topic: "rvt-q1"}, 0,
			[]string{"direction:out", "topic:rvt-q1", "type:sqs"}, 6036096787943204778},
		{"sqs receive of a proxied send", "billing", Edge{Direction: In, Type: TypeSQS, Topic: "rvt-q2"}, 13458743125418896178,
			[]string{"direction:in", "topic:rvt-q2", "type:sqs"}, 5673355342298467590},
		{"sns publish", "orders-traced", Edge{Direction: Out, Type: TypeSNS, Topic: "rvt-t1"}, 0,
			[]string{"direction:out", "topic:rvt-t1", "type:sns"}, 17974881069068067270},
		{"sqs receive of an sns publish (raw delivery)", "billing", Edge{Direction: In, Type: TypeSQS, Topic: "rvt-sq2"}, 2218348416323440871,
			[]string{"direction:in", "topic:rvt-sq2", "type:sqs"}, 16442561238132340684},
		{"kinesis put", "orders-api", Edge{Direction: Out, Type: TypeKinesis, Topic: "rvt-s1"}, 0,
			[]string{"direction:out", "topic:rvt-s1", "type:kinesis"}, 14950125057292093633},
		{"kinesis get of a proxied put", "billing", Edge{Direction: In, Type: TypeKinesis, Topic: "rvt-s2"}, 11462297217831072727,
			[]string{"direction:in", "topic:rvt-s2", "type:kinesis"}, 4259310533617382920},
		{"rabbitmq publish, default exchange", "orders-api", Edge{Direction: Out, Type: TypeRabbitMQ, Topic: "rvt-aq1"}, 0,
			[]string{"direction:out", "topic:rvt-aq1", "type:rabbitmq"}, 4812818964735478098},
		{"rabbitmq publish, named exchange", "orders-api", Edge{Direction: Out, Type: TypeRabbitMQ, Exchange: "rvt-ax", HasRoutingKey: RoutingKeyTrue}, 0,
			[]string{"direction:out", "exchange:rvt-ax", "has_routing_key:true", "type:rabbitmq"}, 12408942674205763523},
		{"rabbitmq consume of a proxied publish", "billing", Edge{Direction: In, Type: TypeRabbitMQ, Topic: "rvt-aq3"}, 8661059868481745548,
			[]string{"direction:in", "topic:rvt-aq3", "type:rabbitmq"}, 943355765337611808},
	}
	now := time.UnixMilli(1796645469127)
	for _, tt := range tests {
		c := NewCheckpointer("prod", 0)
		var parent Context
		if tt.parent != 0 {
			parent = Context{Hash: tt.parent, PathwayStart: now.Add(-time.Second), EdgeStart: now.Add(-time.Second)}
		}
		pt, ctx := c.Checkpoint(parent, tt.service, tt.edge, 11, now)
		if pt.Hash != tt.want || ctx.Hash != tt.want || pt.ParentHash != tt.parent {
			t.Errorf("%s: hash %d (context %d), parent %d; dd-trace-go: hash %d, parent %d",
				tt.name, pt.Hash, ctx.Hash, pt.ParentHash, tt.want, tt.parent)
		}
		if !slices.Equal(pt.EdgeTags, tt.wantTags) {
			t.Errorf("%s: edge tags %v; dd-trace-go reported %v", tt.name, pt.EdgeTags, tt.wantTags)
		}
	}
}
