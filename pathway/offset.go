package pathway

import "strconv"

// OffsetKind is the kind of Kafka offset a backlog reports.
type OffsetKind uint8

// The three backlog kinds of the Go tracer.
const (
	KafkaProduce       OffsetKind = iota + 1 // last offset written to a partition
	KafkaCommit                              // offset committed by a group (the next one to read)
	KafkaHighWatermark                       // partition high watermark seen in a fetch
)

// String is the value of the backlog's `type:` tag.
func (k OffsetKind) String() string {
	switch k {
	case KafkaProduce:
		return "kafka_produce"
	case KafkaCommit:
		return "kafka_commit"
	case KafkaHighWatermark:
		return "kafka_high_watermark"
	}
	return "unknown"
}

// Offset is one Kafka offset observation. The aggregator keeps the maximum Value per
// (Service, Kind, Group, Topic, Partition, ClusterID) and bucket.
type Offset struct {
	Kind      OffsetKind
	Service   string // service whose payload carries the backlog; empty means the default service
	Group     string // commits only
	Topic     string
	Partition int32
	ClusterID string
	Value     int64
	Time      int64 // unix ns when it was observed
}

// Tags returns the backlog tags in the Go tracer's order.
func (o Offset) Tags() []string {
	tags := make([]string, 0, 5)
	if o.Kind == KafkaCommit {
		tags = append(tags, "consumer_group:"+o.Group)
	}
	tags = append(tags,
		"partition:"+strconv.FormatInt(int64(o.Partition), 10),
		"topic:"+o.Topic,
		"type:"+o.Kind.String())
	if o.ClusterID != "" {
		tags = append(tags, "kafka_cluster_id:"+o.ClusterID)
	}
	return tags
}
