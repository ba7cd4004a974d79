package kafka

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// commitFacts are the offsets an OffsetCommit or TxnOffsetCommit request commits; they become
// kafka_commit backlogs for each partition the response accepts.
type commitFacts struct {
	group    string
	txnID    string      // TxnOffsetCommit: the transaction whose EndTxn makes the offsets count
	producer txnProducer // TxnOffsetCommit: the producer running that transaction
	offsets  []committed
}

// txnProducer is the producer id and epoch a transaction runs under. A transactional id gets a
// new epoch when a producer (re)starts with it, and the coordinator then aborts the transaction
// the old epoch left open: offsets held for another producer or epoch never count.
type txnProducer struct {
	id    int64
	epoch int16
}

// endTxnFacts is what an EndTxn request says.
type endTxnFacts struct {
	txnID    string
	producer txnProducer
	commit   bool
}

// heldTxn is the offsets one transaction's TxnOffsetCommits sent.
type heldTxn struct {
	producer txnProducer
	offsets  []pathway.Offset
}

// txnCommits holds the offsets a TxnOffsetCommit sent, per transactional id, until EndTxn says
// whether the transaction commits them (TxnOffsetCommit goes to the group coordinator, EndTxn to
// the transaction coordinator: other connections, so the proxy holds them, not the session).
// Bounded to the maxTxns transactions seen most recently (proxy.RecentMap).
type txnCommits struct {
	mu      sync.Mutex
	pending *proxy.RecentMap[string, heldTxn]
	dropped atomic.Uint64 // offsets past maxTxnOffsets in one transaction: no backlog for them
}

const (
	maxTxns       = 10000
	maxTxnOffsets = 10000 // per transaction
)

func (t *txnCommits) hold(txnID string, producer txnProducer, o pathway.Offset) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending == nil {
		t.pending = proxy.NewRecentMap[string, heldTxn](maxTxns)
	}
	held, _ := t.pending.Get(txnID)
	if held.producer != producer {
		// Another producer or epoch: the transaction held before has ended, aborted by the
		// coordinator (or committed through another proxy). Its offsets never count here.
		held = heldTxn{producer: producer}
	}
	if len(held.offsets) < maxTxnOffsets {
		held.offsets = append(held.offsets, o)
	} else {
		t.dropped.Add(1)
	}
	t.pending.Put(txnID, held)
}

// end returns the offsets transaction txnID committed, given EndTxn's request and answer (code),
// and forgets them; none when it aborted, failed, or they belong to another producer or epoch.
// A retriable error keeps them: the client sends EndTxn again, and that one may commit.
func (t *txnCommits) end(f endTxnFacts, code int16) []pathway.Offset {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending == nil {
		return nil
	}
	held, ok := t.pending.Get(f.txnID)
	if !ok || code != 0 && kerr.IsRetriable(kerr.ErrorForCode(code)) {
		return nil
	}
	t.pending.Delete(f.txnID)
	if held.producer != f.producer || !f.commit || code != 0 {
		return nil
	}
	return held.offsets
}

func (s *session) endTxnRequest(h requestHeader, frame []byte, pd *pending) {
	if !knownVersion(h.Key, h.Version) {
		return
	}
	f, err := parseEndTxn(h, frame)
	if err != nil {
		s.requestParseError(h, err)
		return
	}
	pd.facts = f
}

// endTxnResponse reports the offsets of a transaction that committed as kafka_commit, stamped now.
func (s *session) endTxnResponse(pd *pending, frame []byte) {
	f, ok := pd.facts.(endTxnFacts)
	if !ok {
		return
	}
	resp := kmsg.NewPtrEndTxnResponse()
	if _, ok := s.decodeResponse(pd, frame, resp); !ok {
		return
	}
	if resp.ErrorCode != 0 {
		// No lost messages even for a commit refused for good: the transaction's records were
		// stored and counted as produced, as those of a transaction its producer aborts.
		what := "abort"
		if f.commit {
			what = "commit"
		}
		s.txnError(pd.key, resp.ErrorCode, "transactional id "+f.txnID+", "+what)
	}
	offsets := s.p.txns.end(f, resp.ErrorCode)
	now := s.p.now().UnixNano()
	for _, o := range offsets {
		o.Time = now
		s.p.addOffset(o)
	}
}

type committed struct {
	topic     string // "" when the topic id did not resolve
	topicID   [16]byte
	partition int32
	offset    int64
}

func (s *session) offsetCommitRequest(h requestHeader, frame []byte, pd *pending) {
	s.commitRequest(h, frame, pd, parseOffsetCommit)
}

func (s *session) txnOffsetCommitRequest(h requestHeader, frame []byte, pd *pending) {
	s.commitRequest(h, frame, pd, parseTxnOffsetCommit)
}

func (s *session) commitRequest(h requestHeader, frame []byte, pd *pending, parse func(requestHeader, []byte) (*commitFacts, error)) {
	if !knownVersion(h.Key, h.Version) {
		return
	}
	f, err := parse(h, frame)
	if err != nil {
		s.requestParseError(h, err)
		return
	}
	for i := range f.offsets {
		c := &f.offsets[i]
		c.topic, _ = s.p.topicName(c.topic, c.topicID)
	}
	if s.keepFacts(pd, len(f.offsets)) {
		pd.facts = f
	}
}

// commitResponse turns accepted commits into kafka_commit offsets and errors into events.
func (s *session) commitResponse(pd *pending, frame []byte) {
	f, _ := pd.facts.(*commitFacts)
	if f == nil {
		return
	}
	if len(f.group) > maxGroupNameBytes {
		// Not learned for consume checkpoints either, so a backlog under it would join nothing,
		// and its names (up to 32 KiB) would fill the aggregator's backlogs.
		s.p.skipOp(kmsg.NameForKey(pd.key), "long_group_name",
			fmt.Sprintf("group id of %d bytes, over %d: no kafka_commit backlog for it", len(f.group), maxGroupNameBytes),
			s.info.Load().service, pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka}, -1, 0)
		return
	}
	type part struct {
		topic     string
		id        [16]byte
		partition int32
		code      int16
	}
	var parts []part
	if pd.key == keyOffsetCommit {
		resp := kmsg.NewPtrOffsetCommitResponse()
		if _, ok := s.decodeResponse(pd, frame, resp); !ok {
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				parts = append(parts, part{t.Topic, t.TopicID, p.Partition, p.ErrorCode})
			}
		}
	} else {
		resp := kmsg.NewPtrTxnOffsetCommitResponse()
		if _, ok := s.decodeResponse(pd, frame, resp); !ok {
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				parts = append(parts, part{t.Topic, t.TopicID, p.Partition, p.ErrorCode})
			}
		}
	}
	ci := s.info.Load()
	now := s.p.now().UnixNano()
	for _, rp := range parts {
		for _, c := range f.offsets {
			sameTopic := rp.topic != "" && rp.topic == c.topic || rp.topic == "" && rp.id == c.topicID
			if c.partition != rp.partition || !sameTopic {
				continue
			}
			if c.topic == "" { // a Metadata answer since the request may have named it
				c.topic, _ = s.p.topics.get(c.topicID)
			}
			if rp.code != 0 {
				// An id that still does not resolve is reported on the group's edge (as the
				// group errors are): the refusal counts more than the topic it lacks.
				edge := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: c.topic, Group: f.group,
					ClusterID: s.p.cluster()}
				s.p.brokerError(pd.key, rp.code, ci.service, edge, c.partition, 0)
				break
			}
			if c.topic == "" { // unresolved topic id: no topic to report the offset under
				s.p.skipOp(kmsg.NameForKey(pd.key), "unknown_topic_id", "committed offset of a topic id unknown (in no Metadata answer seen yet, or forgotten past max_topic_ids): no kafka_commit backlog for it",
					ci.service, pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Group: f.group}, c.partition, 0)
				break
			}
			o := pathway.Offset{Kind: pathway.KafkaCommit, Service: ci.service, Group: f.group, ClusterID: s.p.cluster(),
				Topic: c.topic, Partition: c.partition, Value: c.offset, Time: now}
			if pd.key == keyTxnOffsetCommit {
				s.p.txns.hold(f.txnID, f.producer, o) // counts only if the transaction commits
			} else {
				s.p.groups.learn(ci.key(), f.group) // the coordinator took a commit from it
				s.p.addOffset(o)
			}
			break
		}
	}
}
