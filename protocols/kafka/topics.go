package kafka

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// Topic ids. Produce v13, Fetch v13+, OffsetCommit v10 and TxnOffsetCommit v6 name topics by id only.
// The proxy keeps these versions (capping them would cost clients KIP-951 leader hints on Fetch
// v16+ and transactions v2 on Produce v12+, and caps age badly as brokers drop old versions) and
// resolves ids through this cluster-wide map fed by every Metadata response on any connection.
// Clients always send Metadata (v10+ carries the ids) before they produce or fetch a topic, so
// misses are rare: a miss never breaks the client -- the batch is forwarded unmodified (produce)
// or not observed (fetch, commit), and counted (Stats.TopicIDMisses) with a ProxySkip event
// (unknown_topic_id). A miss while learning a group's assignment is only counted.

// topicIDs is a bounded id -> name map; when full it is emptied and refilled by the next Metadata
// responses.
type topicIDs struct {
	mu    sync.RWMutex
	max   int
	names map[[16]byte]string
}

func newTopicIDs(max int) *topicIDs { return &topicIDs{max: max, names: make(map[[16]byte]string)} }

func (t *topicIDs) put(id [16]byte, name string) {
	if id == ([16]byte{}) || name == "" {
		return
	}
	t.mu.RLock()
	cur, ok := t.names[id]
	t.mu.RUnlock()
	if ok && cur == name {
		return
	}
	t.mu.Lock()
	if len(t.names) >= t.max {
		clear(t.names)
	}
	t.names[id] = name
	t.mu.Unlock()
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
		if t.Topic != nil && t.ErrorCode == 0 {
			p.topics.put(t.TopicID, *t.Topic)
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
	}
	return n, ok
}
