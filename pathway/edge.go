package pathway

// Direction says whether a checkpoint is a message leaving a service (out) or reaching one (in).
type Direction string

// The two directions a checkpoint can have.
const (
	In  Direction = "in"
	Out Direction = "out"
)

// The broker types written in the `type:` edge tag.
const (
	TypeKafka    = "kafka"
	TypeSQS      = "sqs"
	TypeSNS      = "sns"
	TypeKinesis  = "kinesis"
	TypeRabbitMQ = "rabbitmq"
)

// RoutingKey is the tri-state `has_routing_key:` tag of an AMQP publish to a named exchange.
type RoutingKey int8

// RoutingKeyUnset leaves the tag out; the others write true or false.
const (
	RoutingKeyUnset RoutingKey = iota
	RoutingKeyTrue
	RoutingKeyFalse
)

// Edge names where a message went or came from. It is comparable, so it can key maps, and its tag
// strings are built in one place only (Tags), so protocol code never writes tag text by hand.
type Edge struct {
	Direction     Direction
	Type          string // TypeKafka, TypeSQS, ...
	Topic         string // Kafka topic, SQS queue, SNS topic, Kinesis stream, AMQP routing key or queue
	Group         string // Kafka consumer group (consume only)
	Exchange      string // AMQP named exchange
	HasRoutingKey RoutingKey
	ClusterID     string // Kafka cluster id
}

// Tags returns the edge tags sorted lexicographically, the order the Go tracer hashes and reports
// them in. The keys are fixed, so the field order below is already the sorted order.
func (e Edge) Tags() []string {
	tags := make([]string, 0, 7)
	if e.Direction != "" {
		tags = append(tags, "direction:"+string(e.Direction))
	}
	if e.Exchange != "" {
		tags = append(tags, "exchange:"+e.Exchange)
	}
	if e.Group != "" {
		tags = append(tags, "group:"+e.Group)
	}
	switch e.HasRoutingKey {
	case RoutingKeyTrue:
		tags = append(tags, "has_routing_key:true")
	case RoutingKeyFalse:
		tags = append(tags, "has_routing_key:false")
	}
	if e.ClusterID != "" {
		tags = append(tags, "kafka_cluster_id:"+e.ClusterID)
	}
	if e.Topic != "" {
		tags = append(tags, "topic:"+e.Topic)
	}
	if e.Type != "" {
		tags = append(tags, "type:"+e.Type)
	}
	return tags
}

// String is the tags joined by commas, for logs and error fingerprints shown to people.
func (e Edge) String() string {
	s := ""
	for i, t := range e.Tags() {
		if i > 0 {
			s += ","
		}
		s += t
	}
	return s
}
