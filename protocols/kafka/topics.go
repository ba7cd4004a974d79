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
// misses are rare through one proxy, however many topics the cluster has (topicIDs): a miss never breaks the client -- the batch is forwarded
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

// topicIDs is the id -> name map, bounded to about twice max ids. A cluster can have more topics
// than that, and full Metadata answers (the proxy's own asks, regex consumers, admin tools) then
// name more ids than it keeps; the ids requests name must survive them. So ids live in two
// generations: a new id goes into cur, and when cur holds max the ids a request named within
// topicIDKeepUsed (up to max/2 of them) start the next cur, the rest of cur becomes prev, and
// what prev held is forgotten. An id no request names is kept until two turnovers pass; one in
// use, for as long as it is used. An id a request named before any answer did is kept as used
// when an answer names it (wanted), so that the ask a miss makes teaches it however many
// topics the answer names.
//
// It also keeps each name's latest id: a name answered with another id is a topic deleted and
// created again, whose offsets start over. That is kept for the names of the ids held.
type topicIDs struct {
	mu        sync.RWMutex
	max       int
	cur, prev map[[16]byte]*topicIDEntry
	latest    map[string][16]byte // name -> its latest id
	// retired are ids a name had before its latest (-> the name): a broker whose metadata lags
	// the deletion may still answer one, which is no new topic.
	retired map[[16]byte]string
	wanted  map[[16]byte]struct{} // ids requests named that no answer had shown (topicIDWantedMax)
	now     func() time.Time

	// turnedAt is the last turnover; warnedAt the last one warned of (churn); both under mu.
	turnedAt, warnedAt time.Time
	churn              atomic.Bool // a turnover came within topicIDChurn of the one before, not yet logged
	turnovers          atomic.Uint64

	// want asks the configReader to learn every topic's id from the cluster (see above); askedAt
	// is when it was last asked (unix ns).
	want    chan struct{}
	askedAt atomic.Int64
}

type topicIDEntry struct {
	name   string
	usedAt atomic.Int64 // unix seconds when a request last named the id; 0: none did
}

const (
	// topicIDAskEvery bounds how often misses ask the cluster for its topics: an id it does not
	// know either (a topic deleted since a client's Metadata) is missed again until the client
	// asks for Metadata, and each ask is an answer naming every topic.
	topicIDAskEvery = 10 * time.Second
	// topicIDKeepUsed: an id a request named within it outlives turnovers. Clients ask for
	// their topics' Metadata every 5 minutes (metadata.max.age.ms), which teaches an id again.
	topicIDKeepUsed = 10 * time.Minute
	// topicIDChurn: turnovers closer than this mean the cluster names more ids than the bound
	// holds; that is logged at most once per topicIDChurn.
	topicIDChurn = 10 * time.Minute
	// topicIDWantedMax bounds the ids missed and not answered yet; past it they are forgotten.
	topicIDWantedMax = 4096
)

func newTopicIDs(max int) *topicIDs {
	return &topicIDs{max: max, cur: make(map[[16]byte]*topicIDEntry), latest: make(map[string][16]byte),
		retired: make(map[[16]byte]string), wanted: make(map[[16]byte]struct{}), now: time.Now,
		want: make(chan struct{}, 1)}
}

// missed notes that a request named id, which the map does not hold, and asks for the cluster's
// topics, unless it was asked within topicIDAskEvery.
func (t *topicIDs) missed(id [16]byte, now time.Time) {
	t.mu.RLock()
	_, noted := t.wanted[id]
	t.mu.RUnlock()
	if !noted {
		t.mu.Lock()
		if len(t.wanted) >= topicIDWantedMax {
			clear(t.wanted)
		}
		t.wanted[id] = struct{}{}
		t.mu.Unlock()
	}
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
	e := t.entryLocked(id)
	latest := t.latest[name]
	t.mu.RUnlock()
	if e != nil && e.name == name && latest == id {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if e = t.entryLocked(id); e == nil || e.name != name {
		if e != nil && t.latest[e.name] == id {
			delete(t.latest, e.name) // an id names one topic: the name it had is no more its
		}
		t.insertLocked(id, name, e)
	}
	if n, old := t.retired[id]; old && n == name {
		return false
	}
	prev, known := t.latest[name]
	if known && prev == id {
		return false
	}
	if known && len(t.retired) >= t.max {
		// Only after names were recreated this often: forget both, as a retired id
		// without its name's latest would be taken for a new topic. This recreation is
		// still told, and prev kept retired below: a lagging broker answers it next.
		clear(t.latest)
		clear(t.retired)
	}
	t.latest[name] = id
	if known {
		t.retired[prev] = name
	}
	return known
}

func (t *topicIDs) entryLocked(id [16]byte) *topicIDEntry {
	if e := t.cur[id]; e != nil {
		return e
	}
	return t.prev[id]
}

// insertLocked makes id name name; old is id's entry, if it has one under another name.
func (t *topicIDs) insertLocked(id [16]byte, name string, old *topicIDEntry) {
	now := t.now()
	e := &topicIDEntry{name: name}
	if _, ok := t.wanted[id]; ok {
		delete(t.wanted, id)
		e.usedAt.Store(now.Unix())
	} else if old != nil {
		e.usedAt.Store(old.usedAt.Load())
	}
	if _, ok := t.prev[id]; ok {
		t.prev[id] = e
		return
	}
	if _, ok := t.cur[id]; !ok && len(t.cur) >= t.max {
		t.turnOverLocked(now)
	}
	t.cur[id] = e
}

// turnOverLocked starts a new generation (see topicIDs).
func (t *topicIDs) turnOverLocked(now time.Time) {
	since := now.Add(-topicIDKeepUsed).Unix()
	next := make(map[[16]byte]*topicIDEntry)
	room := t.max / 2
	for id, e := range t.cur {
		if room == 0 {
			break
		}
		if u := e.usedAt.Load(); u != 0 && u >= since {
			next[id] = e
			delete(t.cur, id)
			room--
		}
	}
	for id, e := range t.prev {
		if room == 0 {
			break
		}
		if u := e.usedAt.Load(); u != 0 && u >= since {
			next[id] = e
			room--
		}
	}
	t.prev, t.cur = t.cur, next
	// A name's ids are kept while the map holds one of them: a lagging broker's retired id
	// after its name was forgotten would be taken for a new topic.
	var named map[string]bool // names of retired ids held
	for id, name := range t.retired {
		if t.entryLocked(id) != nil {
			if named == nil {
				named = make(map[string]bool)
			}
			named[name] = true
		}
	}
	for name, id := range t.latest {
		if t.entryLocked(id) == nil && !named[name] {
			delete(t.latest, name)
		}
	}
	for id, name := range t.retired {
		if _, ok := t.latest[name]; !ok {
			delete(t.retired, id)
		}
	}
	t.turnovers.Add(1)
	if !t.turnedAt.IsZero() && now.Sub(t.turnedAt) < topicIDChurn && (t.warnedAt.IsZero() || now.Sub(t.warnedAt) >= topicIDChurn) {
		t.warnedAt = now
		t.churn.Store(true)
	}
	t.turnedAt = now
}

// churned reports, once, that the map turned over twice within topicIDChurn, and how many times
// in all. Without locking: every Metadata answer asks.
func (t *topicIDs) churned() (turnovers uint64, ok bool) {
	if !t.churn.Swap(false) {
		return 0, false
	}
	return t.turnovers.Load(), true
}

// get names id, and notes that a request named it.
func (t *topicIDs) get(id [16]byte) (string, bool) {
	t.mu.RLock()
	e := t.entryLocked(id)
	t.mu.RUnlock()
	if e == nil {
		return "", false
	}
	if now := t.now().Unix(); e.usedAt.Load() != now {
		e.usedAt.Store(now)
	}
	return e.name, true
}

// held is how many ids the map holds.
func (t *topicIDs) held() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.cur) + len(t.prev)
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
	if n, ok := p.topics.churned(); ok {
		p.log.Warn().Int("max_topic_ids", p.topics.max).Uint64("turnovers", n).
			Msg("the cluster's Metadata answers name more topics than max_topic_ids: topic ids no request named lately are forgotten (and those in use past half of max_topic_ids), and a request naming one by id (Produce v13, Fetch v13+, OffsetCommit v10, ShareFetch, group assignments) goes without the header or unobserved until the proxy has asked the cluster again; raise max_topic_ids")
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
		p.topics.missed(id, time.Now())
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
