package kafka

import (
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// The coordinator and transaction APIs whose answers' error codes the proxy tracks. Clients
// retry the coordinator's startup codes (COORDINATOR_NOT_AVAILABLE, COORDINATOR_LOAD_IN_PROGRESS,
// NOT_COORDINATOR, CONCURRENT_TRANSACTIONS) without a word, and fail on the others
// (PRODUCER_FENCED, INVALID_TXN_STATE, an authorization failure) far from the request that got
// them: these answers are where either is seen.
const (
	keyOffsetFetch        int16 = 9
	keyInitProducerID     int16 = 22
	keyAddPartitionsToTxn int16 = 24
	keyAddOffsetsToTxn    int16 = 25
)

// observedKeys are APIs whose answers the proxy only reads, for their error codes or for what
// they deleted (deletions.go), and never rewrites: ApiVersions leaves their versions as the broker offers them (capping InitProducerID
// at kmsg's v5 would take Kafka 4.1's two-phase commit, v6, from clients for the sake of an error
// count). A version kmsg does not know is relayed unread (handleRequest and handleResponse check
// knownVersion), so its codes are not tracked.
var observedKeys = map[int16]bool{
	keyOffsetFetch: true, keyInitProducerID: true, keyAddPartitionsToTxn: true, keyAddOffsetsToTxn: true,
	keyDeleteTopics: true, keyDeleteGroups: true, keyOffsetDelete: true,
}

// coordinatorKey is what a FindCoordinator request asks for: its key type (0 a group, 1 a
// transactional id, 2 a share partition) and, before v4, its key (v4+ answers echo each key).
type coordinatorKey struct {
	key     string
	keyType int8
}

// txnFacts are the transactional id (and, for AddOffsetsToTxn, group) a transaction request
// names; the answers name neither.
type txnFacts struct {
	txnID string // "" for an idempotent producer's InitProducerID
	group string
}

// offsetFetchGroup is the group of an OffsetFetch request before v8 (v8+ answers name it).
type offsetFetchGroup string

// coordinatorRequest keeps what the answer to a coordinator or transaction request does not say.
func (s *session) coordinatorRequest(h requestHeader, frame []byte, pd *pending) {
	if !knownVersion(h.Key, h.Version) {
		return
	}
	var facts any
	var err error
	switch h.Key {
	case keyFindCoordinator:
		facts, err = parseFindCoordinator(h, frame)
	case keyOffsetFetch:
		if h.Version >= 8 {
			return
		}
		var g string
		g, err = parseFirstString(h, frame)
		facts = offsetFetchGroup(g)
	case keyInitProducerID:
		facts, err = parseInitProducerID(h, frame)
	case keyAddPartitionsToTxn:
		if h.Version >= 4 { // the brokers' batched form (KIP-890), never a client's
			return
		}
		var id string
		id, err = parseFirstString(h, frame)
		facts = txnFacts{txnID: id}
	case keyAddOffsetsToTxn:
		facts, err = parseAddOffsetsToTxn(h, frame)
	}
	if err != nil {
		s.requestParseError(h, err)
		return
	}
	pd.facts = facts
}

// coordinatorResponse tracks the error codes of an OffsetFetch, InitProducerID,
// AddPartitionsToTxn or AddOffsetsToTxn answer.
func (s *session) coordinatorResponse(pd *pending, frame []byte) {
	switch pd.key {
	case keyOffsetFetch:
		s.offsetFetchResponse(pd, frame)
	case keyInitProducerID:
		resp := kmsg.NewPtrInitProducerIDResponse()
		if f, ok := pd.facts.(txnFacts); ok {
			if _, ok := s.decodeResponse(pd, frame, resp); ok && resp.ErrorCode != 0 {
				s.txnError(pd.key, resp.ErrorCode, f.about())
			}
		}
	case keyAddOffsetsToTxn:
		resp := kmsg.NewPtrAddOffsetsToTxnResponse()
		if f, ok := pd.facts.(txnFacts); ok {
			if _, ok := s.decodeResponse(pd, frame, resp); ok && resp.ErrorCode != 0 {
				s.txnError(pd.key, resp.ErrorCode, f.about())
			}
		}
	case keyAddPartitionsToTxn:
		s.addPartitionsResponse(pd, frame)
	}
}

// about names the transaction in an event's message.
func (f txnFacts) about() string {
	s := "idempotent producer"
	if f.txnID != "" {
		s = "transactional id " + f.txnID
	}
	if f.group != "" {
		s += ", group " + f.group
	}
	return s
}

// txnError tracks a code of a transaction API whose answer names no topic on the cluster's edge
// (no transactional-id edge tag exists), the transaction named in the message.
func (s *session) txnError(key, code int16, about string) {
	s.p.brokerErrorMessage(key, code, errorDescription(code)+" ("+about+")", s.info.Load().service,
		pathway.Edge{Type: pathway.TypeKafka, ClusterID: s.p.cluster()}, -1, 0)
}

// addPartitionsResponse tracks AddPartitionsToTxn's per-partition codes on each topic's produce
// edge. OPERATION_NOT_ATTEMPTED is not tracked: it marks the partitions the coordinator left
// alone because another of the request failed, whose own code is tracked.
func (s *session) addPartitionsResponse(pd *pending, frame []byte) {
	f, ok := pd.facts.(txnFacts)
	if !ok {
		return
	}
	resp := kmsg.NewPtrAddPartitionsToTxnResponse()
	if _, ok := s.decodeResponse(pd, frame, resp); !ok {
		return
	}
	service := s.info.Load().service
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if p.ErrorCode == 0 || p.ErrorCode == kerr.OperationNotAttempted.Code {
				continue
			}
			edge := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: t.Topic, ClusterID: s.p.cluster()}
			s.p.brokerErrorMessage(pd.key, p.ErrorCode, errorDescription(p.ErrorCode)+" ("+f.about()+")", service, edge, p.Partition, 0)
		}
	}
}

// offsetFetchResponse tracks OffsetFetch's group codes on the group's edge and its per-partition
// codes on the group's and topic's, as OffsetCommit's.
func (s *session) offsetFetchResponse(pd *pending, frame []byte) {
	resp := kmsg.NewPtrOffsetFetchResponse()
	if pd.version < 8 {
		g, ok := pd.facts.(offsetFetchGroup)
		if !ok {
			return
		}
		if _, ok := s.decodeResponse(pd, frame, resp); !ok {
			return
		}
		s.groupCodeError(pd.key, string(g), resp.ErrorCode) // v2+
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				s.fetchedOffsetError(string(g), t.Topic, [16]byte{}, p.Partition, p.ErrorCode)
			}
		}
		return
	}
	if _, ok := s.decodeResponse(pd, frame, resp); !ok {
		return
	}
	for _, g := range resp.Groups {
		s.groupCodeError(pd.key, g.Group, g.ErrorCode)
		for _, t := range g.Topics {
			for _, p := range t.Partitions {
				s.fetchedOffsetError(g.Group, t.Topic, t.TopicID, p.Partition, p.ErrorCode)
			}
		}
	}
}

// groupCodeError tracks a group coordinator's code for a whole group on the group's edge (the
// cluster's too: a group id is unique only within its cluster). groupError uses it as well.
func (s *session) groupCodeError(key int16, group string, code int16) {
	if code == 0 {
		return
	}
	s.p.brokerError(key, code, s.info.Load().service,
		pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Group: group, ClusterID: s.p.cluster()}, -1, 0)
}

// fetchedOffsetError tracks an OffsetFetch partition's code on the group's and topic's edge; a
// topic id (v10) no Metadata answer named goes on the group's edge, the id in the message.
func (s *session) fetchedOffsetError(group, topic string, id [16]byte, partition int32, code int16) {
	if code == 0 {
		return
	}
	msg := errorDescription(code)
	if topic == "" && id != [16]byte{} {
		var note string
		topic, note = s.p.topicByID(id)
		msg += note
	}
	edge := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: topic, Group: group, ClusterID: s.p.cluster()}
	s.p.brokerErrorMessage(keyOffsetFetch, code, msg, s.info.Load().service, edge, partition, 0)
}

// findCoordinatorErrors tracks FindCoordinator's codes: a group's on the group's edge, a
// transactional id's (or a share partition's) on the cluster's edge with the key in the message.
func (s *session) findCoordinatorErrors(pd *pending, resp *kmsg.FindCoordinatorResponse) {
	k, ok := pd.facts.(coordinatorKey)
	if !ok {
		return
	}
	if pd.version < 4 {
		s.coordinatorError(k, resp.ErrorCode)
		return
	}
	for _, c := range resp.Coordinators {
		s.coordinatorError(coordinatorKey{key: c.Key, keyType: k.keyType}, c.ErrorCode)
	}
}

func (s *session) coordinatorError(k coordinatorKey, code int16) {
	if code == 0 {
		return
	}
	switch k.keyType {
	case 0:
		s.groupCodeError(keyFindCoordinator, k.key, code)
	case 1:
		s.txnError(keyFindCoordinator, code, "transactional id "+k.key)
	default:
		s.txnError(keyFindCoordinator, code, "share coordinator key "+k.key)
	}
}
