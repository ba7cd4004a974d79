package kafka

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// commitFacts are the offsets an OffsetCommit or TxnOffsetCommit request commits; they become
// kafka_commit backlogs for each partition the response accepts.
type commitFacts struct {
	group   string
	txnID   string // TxnOffsetCommit: the transaction whose EndTxn makes the offsets count
	offsets []committed
}

// endTxnFacts is what an EndTxn request says.
type endTxnFacts struct {
	txnID  string
	commit bool
}

// txnCommits holds the offsets a TxnOffsetCommit sent, per transactional id, until EndTxn says
// whether the transaction commits them (TxnOffsetCommit goes to the group coordinator, EndTxn to
// the transaction coordinator: other connections, so the proxy holds them, not the session).
// Bounded to the maxTxns transactions seen most recently (proxy.RecentMap).
type txnCommits struct {
	mu      sync.Mutex
	pending *proxy.RecentMap[string, []pathway.Offset]
}

const (
	maxTxns       = 10000
	maxTxnOffsets = 10000 // per transaction
)

func (t *txnCommits) hold(txnID string, o pathway.Offset) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending == nil {
		t.pending = proxy.NewRecentMap[string, []pathway.Offset](maxTxns)
	}
	if held, _ := t.pending.Get(txnID); len(held) < maxTxnOffsets {
		t.pending.Put(txnID, append(held, o))
	}
}

// end returns the offsets transaction txnID committed (none when it aborted) and forgets them.
func (t *txnCommits) end(txnID string, commit bool) []pathway.Offset {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending == nil {
		return nil
	}
	held, _ := t.pending.Get(txnID)
	t.pending.Delete(txnID)
	if !commit {
		return nil
	}
	return held
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
	offsets := s.p.txns.end(f.txnID, f.commit && resp.ErrorCode == 0)
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
	if h.Key == keyOffsetCommit {
		s.p.groups.learn(s.info.Load().key(), f.group)
	}
	for i := range f.offsets {
		c := &f.offsets[i]
		c.topic, _ = s.p.topicName(c.topic, c.topicID)
	}
	pd.facts = f
}

// commitResponse turns accepted commits into kafka_commit offsets and errors into events.
func (s *session) commitResponse(pd *pending, frame []byte) {
	f, _ := pd.facts.(*commitFacts)
	if f == nil {
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
				edge := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: c.topic, Group: f.group}
				if c.topic != "" {
					edge.ClusterID = s.p.cluster()
				}
				s.p.brokerError(pd.key, rp.code, ci.service, edge, c.partition, 0)
				break
			}
			if c.topic == "" {
				break // unresolved topic id: no topic to report the offset under
			}
			o := pathway.Offset{Kind: pathway.KafkaCommit, Service: ci.service, Group: f.group, ClusterID: s.p.cluster(),
				Topic: c.topic, Partition: c.partition, Value: c.offset, Time: now}
			if pd.key == keyTxnOffsetCommit {
				s.p.txns.hold(f.txnID, o) // counts only if the transaction commits
			} else {
				s.p.addOffset(o)
			}
			break
		}
	}
}
