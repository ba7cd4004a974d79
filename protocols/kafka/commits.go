package kafka

import (
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// commitFacts are the offsets an OffsetCommit or TxnOffsetCommit request commits; they become
// kafka_commit backlogs for each partition the response accepts.
type commitFacts struct {
	group   string
	offsets []committed
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
			if c.topic == "" {
				break // unresolved topic id: nothing to report under
			}
			if rp.code != 0 {
				s.p.brokerError(pd.key, rp.code, ci.service, pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: c.topic, Group: f.group, ClusterID: s.p.cluster()}, c.partition, 0)
				break
			}
			s.p.addOffset(pathway.Offset{Kind: pathway.KafkaCommit, Service: ci.service, Group: f.group, ClusterID: s.p.cluster(),
				Topic: c.topic, Partition: c.partition, Value: c.offset, Time: now})
			break
		}
	}
}
