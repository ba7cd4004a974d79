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

// OffsetsGone says Kafka offsets observed before Time no longer hold: the cluster deleted a
// topic, or one was created again under its name (its offsets start over), a consumer group,
// or a group's offsets of a partition. Whatever keeps last known offsets (the proxy's own view)
// forgets those of the scope seen before Time; the Agent, which files offsets by bucket, gets
// nothing.
type OffsetsGone struct {
	ClusterID string
	Topic     string // "": every topic (a group deleted)
	Group     string // "": every kind of offset of Topic; else only this group's commits
	Partition int32  // -1: every partition
	Time      int64  // unix ns
}

// Covers reports whether the offset of kind on (cluster, topic, partition), committed by group
// for a commit, is one g says is gone (whenever it was seen).
func (g OffsetsGone) Covers(kind OffsetKind, cluster, group, topic string, partition int32) bool {
	return cluster == g.ClusterID &&
		(g.Topic == "" || topic == g.Topic) &&
		(g.Group == "" || kind == KafkaCommit && group == g.Group) &&
		(g.Partition < 0 || partition == g.Partition)
}
