package kafka

import (
	"encoding/base64"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// Topic ids. Produce v13, Fetch v13+, OffsetCommit v10 and TxnOffsetCommit v6 name topics by id only.
// The proxy keeps these versions (capping them would cost clients KIP-951 leader hints on Fetch
// v16+ and transactions v2 on Produce v12+, and caps age badly as brokers drop old versions) and
// resolves ids through this cluster-wide map fed by every Metadata response on any connection.
// Clients always send Metadata (v10+ carries the ids) before they produce or fetch a topic, so
// misses are rare through one proxy: a miss never breaks the client -- the batch is forwarded
// unmodified (produce) or not observed (fetch, commit), and counted (Stats.TopicIDMisses) with a
// ProxySkip event (unknown_topic_id). A miss while learning a group's assignment is counted, and
// the id is named again at each group lookup until a later Metadata answer teaches it.
//
// With several proxy instances in front of one cluster, a client's Metadata may have gone through
// another instance (it bootstrapped there; its connections are balanced one by one behind a name
// both share; that instance went down and the client reconnected to the same addresses), and a
// topic created after this instance started is not in what it learned from the cluster then
// (discover.go). So a miss also asks the cluster itself for every topic (Metadata, on the
// configReader's connection), at most once per topicIDAskEvery: what follows the first requests
// naming the topic is then injected and observed.

// topicIDs is a bounded id -> name map; when full it is emptied and refilled by the next Metadata
// responses. It also keeps each name's latest id: a name answered with another id is a topic
// deleted and created again, whose offsets start over.
type topicIDs struct {
	mu    sync.RWMutex
	max   int
	names map[[16]byte]string
	ids   map[string][16]byte // name -> its latest id
	// retired are ids a name had before its latest: a broker whose metadata lags the deletion
	// may still answer one, which is no new topic.
	retired map[[16]byte]struct{}

	// want asks the configReader to learn every topic's id from the cluster (see above); askedAt
	// is when it was last asked (unix ns).
	want    chan struct{}
	askedAt atomic.Int64
}

// topicIDAskEvery bounds how often misses ask the cluster for its topics: an id it does not know
// either (a topic deleted since a client's Metadata) is missed again until the client asks for
// Metadata, and each ask is an answer naming every topic.
const topicIDAskEvery = 10 * time.Second

func newTopicIDs(max int) *topicIDs {
	return &topicIDs{max: max, names: make(map[[16]byte]string), ids: make(map[string][16]byte), retired: make(map[[16]byte]struct{}),
		want: make(chan struct{}, 1)}
}

// missed asks for the cluster's topics after a miss, unless it was asked within topicIDAskEvery.
func (t *topicIDs) missed(now time.Time) {
	last, n := t.askedAt.Load(), now.UnixNano()
	if last != 0 && n-last < int64(topicIDAskEvery) || !t.askedAt.CompareAndSwap(last, n) {
		return
	}
	select {
	case t.want <- struct{}{}:
	default: // an ask is waiting already
	}
}

// put learns that id names name; recreated is true when name had another id before, which this
// one replaces (the topic was deleted and created again).
func (t *topicIDs) put(id [16]byte, name string) (recreated bool) {
	if id == ([16]byte{}) || name == "" {
		return false
	}
	t.mu.RLock()
	cur, ok := t.names[id]
	latest := t.ids[name]
	t.mu.RUnlock()
	if ok && cur == name && latest == id {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.names) >= t.max || len(t.retired) >= t.max {
		clear(t.names)
		clear(t.ids)
		clear(t.retired)
	}
	t.names[id] = name
	if _, old := t.retired[id]; old {
		return false
	}
	prev, known := t.ids[name]
	if known && prev == id {
		return false
	}
	t.ids[name] = id
	if known {
		t.retired[prev] = struct{}{}
	}
	return known
}

func (t *topicIDs) get(id [16]byte) (string, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n, ok := t.names[id]
	return n, ok
}

// noteCluster keeps the cluster id Metadata (v2+) names: the tracers tag Kafka checkpoints and
// offsets with kafka_cluster_id when their client knows it, and it is part of the node hash.
func (p *Proxy) noteCluster(id string) {
	if id == "" {
		return
	}
	if old := p.clusterID.Load(); old != nil && *old == id {
		return
	}
	p.clusterID.Store(&id)
	p.log.Info().Str("kafka_cluster_id", id).Msg("kafka cluster identified")
}

// cluster is the cluster id, or "" before any Metadata named it.
func (p *Proxy) cluster() string {
	if id := p.clusterID.Load(); id != nil {
		return *id
	}
	return ""
}

func (p *Proxy) learnTopics(r *kmsg.MetadataResponse) {
	for i := range r.Topics {
		t := &r.Topics[i]
		if t.Topic != nil && t.ErrorCode == 0 && p.topics.put(t.TopicID, *t.Topic) {
			p.log.Info().Str("topic", *t.Topic).Msg("topic created again under its name (a new topic id): its offsets start over")
			p.offsetsGone(*t.Topic, "", -1)
		}
	}
}

// topicName returns name, or the name of id when name is empty (topic-id versions).
func (p *Proxy) topicName(name string, id [16]byte) (string, bool) {
	if name != "" {
		return name, true
	}
	n, ok := p.topics.get(id)
	if !ok {
		p.stats.topicMiss.Add(1)
		p.topics.missed(time.Now())
	}
	return n, ok
}

// topicByID names the topic of id for an error event: its name when a Metadata answer gave it,
// else "" and a note for the event's message that names the id, as Kafka prints ids.
func (p *Proxy) topicByID(id [16]byte) (topic, note string) {
	if name, ok := p.topics.get(id); ok {
		return name, ""
	}
	return "", " (topic id " + base64.RawURLEncoding.EncodeToString(id[:]) + ")"
}

// metadataErrors reports the per-topic error codes of a Metadata answer to a client. They are
// the only sign of a topic the client cannot use: a producer sends no Produce for it (its records
// time out inside the client) and a consumer no Fetch. Metadata does not say whether the client
// produces or consumes, so the edge carries no direction rather than a guess. While a topic is
// missing clients ask again every 100 ms to a few seconds; each answer is one more event of the
// same group, which the collector counts and logs once per interval.
func (s *session) metadataErrors(r *kmsg.MetadataResponse) {
	for i := range r.Topics {
		t := &r.Topics[i]
		if t.ErrorCode == 0 || !trackedMetadataCode(t.ErrorCode) {
			continue
		}
		edge := pathway.Edge{Type: pathway.TypeKafka, ClusterID: s.p.cluster()}
		msg := errorDescription(t.ErrorCode)
		switch {
		case t.Topic != nil && *t.Topic != "":
			edge.Topic = *t.Topic
		case t.TopicID != [16]byte{}:
			// v12+ asked by id: the answer names no topic (UNKNOWN_TOPIC_ID). The id may be one
			// a Metadata answer named before the topic was deleted.
			var note string
			edge.Topic, note = s.p.topicByID(t.TopicID)
			msg += note
		}
		s.p.brokerErrorMessage(keyMetadata, t.ErrorCode, msg, s.info.Load().service, edge, -1, 0)
	}
}

// trackedMetadataCode: every per-topic code but LEADER_NOT_AVAILABLE, which a broker answers
// while it creates the topic (auto-creation's first answer, and for a few hundred ms after
// CreateTopics), so seeing it is normal. The others say the topic cannot be used:
// UNKNOWN_TOPIC_OR_PARTITION, TOPIC_AUTHORIZATION_FAILED, INVALID_TOPIC_EXCEPTION,
// UNKNOWN_TOPIC_ID, and whatever a failed auto-creation returns (INVALID_REPLICATION_FACTOR,
// POLICY_VIOLATION...). Per-partition codes are not read: they are leadership states clients
// wait out (LEADER_NOT_AVAILABLE in an election, REPLICA_NOT_AVAILABLE with a follower down).
func trackedMetadataCode(code int16) bool {
	return code != kerr.LeaderNotAvailable.Code
}
