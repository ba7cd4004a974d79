package kafka

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"reflect"
	"testing"

	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// parsedKeys are the requests whose bodies the proxy reads by hand (reqparse.go, produceparse.go)
// and the versions it reads them at.
var parsedKeys = map[int16]func(v int16) bool{
	keyProduce: func(int16) bool { return true }, keyFetch: func(int16) bool { return true },
	keyOffsetCommit: func(int16) bool { return true }, keyTxnOffsetCommit: func(int16) bool { return true },
	keyEndTxn: func(int16) bool { return true }, keyJoinGroup: func(int16) bool { return true },
	keySyncGroup: func(int16) bool { return true }, keyHeartbeat: func(int16) bool { return true },
	keyLeaveGroup: func(int16) bool { return true }, keyCGHeartbeat: func(int16) bool { return true },
	keySaslHandshake: func(int16) bool { return true }, keyShareFetch: func(int16) bool { return true },
	keyShareAck: func(int16) bool { return true }, keyFindCoordinator: func(int16) bool { return true },
	keyInitProducerID: func(int16) bool { return true }, keyAddOffsetsToTxn: func(int16) bool { return true },
	keyOffsetDelete:       func(int16) bool { return true },
	keyApiVersions:        func(v int16) bool { return v >= 3 }, // the client software name
	keyOffsetFetch:        func(v int16) bool { return v < 8 },  // v8+ answers name the group
	keyAddPartitionsToTxn: func(v int16) bool { return v < 4 },  // v4+ is the brokers' batched form
}

// handParsed is what the proxy's hand parser for h's API reads from frame, in a form comparable
// with kmsgParsed's.
func handParsed(h requestHeader, frame []byte) (any, error) {
	switch h.Key {
	case keyProduce:
		var v produceRequestView
		if err := parseProduce(h, frame, &v); err != nil {
			return nil, err
		}
		out := []any{v.acks}
		for _, p := range v.parts {
			out = append(out, parsedProducePart{p.topic, p.topicID, p.partition, string(frame[p.recStart:p.recEnd]), p.null})
		}
		return out, nil
	case keyFetch:
		f, rack, err := parseFetch(h, frame)
		if err != nil {
			return nil, err
		}
		var rackID string
		if rack != [2]int{} {
			r := wire{Reader: kbin.Reader{Src: frame[rack[0]:rack[1]]}, flex: h.Flexible}
			rackID = r.str()
		}
		return []any{f.readCommitted, f.sessionEpoch, f.offsets, f.forgotten, rackID}, nil
	case keyOffsetCommit, keyTxnOffsetCommit:
		parse := parseOffsetCommit
		if h.Key == keyTxnOffsetCommit {
			parse = parseTxnOffsetCommit
		}
		f, err := parse(h, frame)
		if err != nil {
			return nil, err
		}
		return []any{f.group, f.txnID, f.producer, f.offsets}, nil
	case keyEndTxn:
		f, err := parseEndTxn(h, frame)
		return f, err
	case keySyncGroup, keyHeartbeat:
		return parseSyncGroup(h, frame)
	case keyLeaveGroup:
		l, err := parseLeaveGroup(h, frame)
		return []any{l.group, l.members}, err
	case keyCGHeartbeat:
		m, epoch, err := parseGroupHeartbeat(h, frame)
		return []any{m, epoch}, err
	case keyShareFetch, keyShareAck:
		return parseShareGroup(h, frame)
	case keyFindCoordinator:
		return parseFindCoordinator(h, frame)
	case keyInitProducerID:
		return parseInitProducerID(h, frame)
	case keyAddOffsetsToTxn:
		return parseAddOffsetsToTxn(h, frame)
	default: // JoinGroup, SaslHandshake, OffsetDelete, ApiVersions, OffsetFetch, AddPartitionsToTxn
		return parseFirstString(h, frame)
	}
}

// kmsgParsed is what the hand parser should read from a request kmsg decoded.
func kmsgParsed(req kmsg.Request) any {
	v := req.GetVersion()
	switch r := req.(type) {
	case *kmsg.ProduceRequest:
		out := []any{r.Acks}
		for _, t := range r.Topics {
			for _, p := range t.Partitions {
				pt := parsedProducePart{Partition: p.Partition, Records: string(p.Records), Null: p.Records == nil}
				if v >= 13 {
					pt.ID = t.TopicID
				} else {
					pt.Topic = t.Topic
				}
				out = append(out, pt)
			}
		}
		return out
	case *kmsg.FetchRequest:
		offsets := map[fetchKey]int64{}
		key := func(topic string, id [16]byte, p int32) fetchKey {
			if v >= 13 {
				return fetchKey{id: id, partition: p}
			}
			return fetchKey{topic: topic, partition: p}
		}
		for _, t := range r.Topics {
			for _, p := range t.Partitions {
				offsets[key(t.Topic, t.TopicID, p.Partition)] = p.FetchOffset
			}
		}
		var forgotten []fetchKey
		for _, t := range r.ForgottenTopics {
			for _, p := range t.Partitions {
				forgotten = append(forgotten, key(t.Topic, t.TopicID, p))
			}
		}
		epoch := int32(-1)
		if v >= 7 {
			epoch = r.SessionEpoch
		}
		var rack string
		if v >= 11 {
			rack = r.Rack
		}
		return []any{v >= 4 && r.IsolationLevel == 1, epoch, offsets, forgotten, rack}
	case *kmsg.OffsetCommitRequest:
		var offsets []committed
		for _, t := range r.Topics {
			for _, p := range t.Partitions {
				c := committed{partition: p.Partition, offset: p.Offset}
				if v >= 10 {
					c.topicID = t.TopicID
				} else {
					c.topic = t.Topic
				}
				offsets = append(offsets, c)
			}
		}
		return []any{r.Group, "", txnProducer{}, offsets}
	case *kmsg.TxnOffsetCommitRequest:
		var offsets []committed
		for _, t := range r.Topics {
			for _, p := range t.Partitions {
				c := committed{partition: p.Partition, offset: p.Offset}
				if v >= 6 {
					c.topicID = t.TopicID
				} else {
					c.topic = t.Topic
				}
				offsets = append(offsets, c)
			}
		}
		return []any{r.Group, r.TransactionalID, txnProducer{r.ProducerID, r.ProducerEpoch}, offsets}
	case *kmsg.EndTxnRequest:
		return endTxnFacts{txnID: r.TransactionalID, producer: txnProducer{r.ProducerID, r.ProducerEpoch}, commit: r.Commit}
	case *kmsg.SyncGroupRequest:
		return groupMember{group: r.Group, member: r.MemberID, gen: r.Generation}
	case *kmsg.HeartbeatRequest:
		return groupMember{group: r.Group, member: r.MemberID, gen: r.Generation}
	case *kmsg.LeaveGroupRequest:
		var members []string
		if v < 3 {
			members = []string{r.MemberID}
		}
		for _, m := range r.Members {
			if v >= 3 {
				members = append(members, m.MemberID)
			}
		}
		return []any{r.Group, members}
	case *kmsg.ConsumerGroupHeartbeatRequest:
		return []any{groupMember{group: r.Group, member: r.MemberID}, r.MemberEpoch}
	case *kmsg.ShareFetchRequest:
		return derefOr(r.GroupID)
	case *kmsg.ShareAcknowledgeRequest:
		return derefOr(r.GroupID)
	case *kmsg.FindCoordinatorRequest:
		var k coordinatorKey
		if v < 4 {
			k.key = r.CoordinatorKey
		}
		if v >= 1 {
			k.keyType = r.CoordinatorType
		}
		return k
	case *kmsg.InitProducerIDRequest:
		return txnFacts{txnID: derefOr(r.TransactionalID)}
	case *kmsg.AddOffsetsToTxnRequest:
		return txnFacts{txnID: r.TransactionalID, group: r.Group}
	case *kmsg.JoinGroupRequest:
		return r.Group
	case *kmsg.SASLHandshakeRequest:
		return r.Mechanism
	case *kmsg.OffsetDeleteRequest:
		return r.Group
	case *kmsg.ApiVersionsRequest:
		return r.ClientSoftwareName
	case *kmsg.OffsetFetchRequest:
		return r.Group
	case *kmsg.AddPartitionsToTxnRequest:
		return r.TransactionalID
	}
	panic(fmt.Sprintf("no kmsg reading for %T", req))
}

// parsedProducePart is one partition of a produce request: where it goes and its records.
type parsedProducePart struct {
	Topic     string
	ID        [16]byte
	Partition int32
	Records   string
	Null      bool
}

func derefOr(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// requestWithBody is a request frame of key at version with body after its header.
func requestWithBody(key, version int16, body []byte) []byte {
	frame := binary.BigEndian.AppendUint16(make([]byte, 4), uint16(key))
	frame = binary.BigEndian.AppendUint16(frame, uint16(version))
	frame = binary.BigEndian.AppendUint32(frame, 7)
	frame = append(frame, 0, 2, 'f', 'z') // client id
	if isFlexible(key, version) {
		frame = append(frame, 0) // no header tags
	}
	frame = append(frame, body...)
	putSize(frame)
	return frame
}

// FuzzRequestParsers: each request the proxy reads by hand is read as kmsg (the reference decoder,
// which the proxy cannot use on clients' requests: reqparse.go) reads it: the group, member,
// transaction, offsets and records the proxy acts on are the client's. Whatever kmsg reads, the
// hand parser reads in kmsg's encoding; a body kmsg refuses may still read by hand (the hand
// parsers stop at the fields they need), and nothing panics.
func FuzzRequestParsers(f *testing.F) {
	for _, api := range []string{"produce", "fetch", "offsetcommit", "joingroup", "syncgroup"} { // real clients' requests
		for _, frame := range goldenOf(f, api) {
			h, err := parseRequestHeader(frame)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(h.Key, h.Version, frame[h.BodyStart:])
		}
	}
	group, txn, md := "g", kmsg.StringPtr("tx"), kmsg.StringPtr("meta")
	for key := range parsedKeys {
		req := kmsg.RequestForKey(key)
		for v := int16(0); v <= req.MaxVersion(); v++ {
			if !parsedKeys[key](v) {
				continue
			}
			req.SetVersion(v)
			switch r := req.(type) { // fields filled in, so that each seed has what the parser reads
			case *kmsg.ProduceRequest:
				r.TransactionID, r.Acks = txn, -1
				r.Topics = []kmsg.ProduceRequestTopic{{Topic: "t", TopicID: fuzzTopicID, Partitions: []kmsg.ProduceRequestTopicPartition{{Partition: 1, Records: []byte("rec")}, {Partition: 2}}}}
			case *kmsg.FetchRequest:
				r.IsolationLevel, r.SessionEpoch, r.Rack = 1, 3, "rack-a"
				r.Topics = []kmsg.FetchRequestTopic{{Topic: "t", TopicID: fuzzTopicID, Partitions: []kmsg.FetchRequestTopicPartition{{Partition: 1, FetchOffset: 9}}}}
				r.ForgottenTopics = []kmsg.FetchRequestForgottenTopic{{Topic: "u", TopicID: [16]byte{2}, Partitions: []int32{4, 5}}}
			case *kmsg.OffsetCommitRequest:
				r.Group, r.Generation, r.MemberID = group, 2, "m"
				r.Topics = []kmsg.OffsetCommitRequestTopic{{Topic: "t", TopicID: fuzzTopicID, Partitions: []kmsg.OffsetCommitRequestTopicPartition{{Partition: 1, Offset: 5, Metadata: md}}}}
			case *kmsg.TxnOffsetCommitRequest:
				r.TransactionalID, r.Group, r.ProducerID, r.ProducerEpoch = *txn, group, 8, 1
				r.Topics = []kmsg.TxnOffsetCommitRequestTopic{{Topic: "t", TopicID: fuzzTopicID, Partitions: []kmsg.TxnOffsetCommitRequestTopicPartition{{Partition: 1, Offset: 5}}}}
			case *kmsg.EndTxnRequest:
				r.TransactionalID, r.ProducerID, r.ProducerEpoch, r.Commit = *txn, 8, 1, true
			case *kmsg.SyncGroupRequest:
				r.Group, r.Generation, r.MemberID = group, 3, "m"
			case *kmsg.HeartbeatRequest:
				r.Group, r.Generation, r.MemberID = group, 3, "m"
			case *kmsg.LeaveGroupRequest:
				r.Group, r.MemberID = group, "m"
				r.Members = []kmsg.LeaveGroupRequestMember{{MemberID: "m", Reason: kmsg.StringPtr("bye")}, {MemberID: "n"}}
			case *kmsg.ConsumerGroupHeartbeatRequest:
				r.Group, r.MemberID, r.MemberEpoch = group, "m", -1
			case *kmsg.ShareFetchRequest:
				r.GroupID = &group
			case *kmsg.ShareAcknowledgeRequest:
				r.GroupID = &group
			case *kmsg.FindCoordinatorRequest:
				r.CoordinatorKey, r.CoordinatorKeys, r.CoordinatorType = *txn, []string{*txn}, 1
			case *kmsg.InitProducerIDRequest:
				r.TransactionalID = txn
			case *kmsg.AddOffsetsToTxnRequest:
				r.TransactionalID, r.Group = *txn, group
			case *kmsg.JoinGroupRequest:
				r.Group = group
			case *kmsg.SASLHandshakeRequest:
				r.Mechanism = "PLAIN"
			case *kmsg.OffsetDeleteRequest:
				r.Group = group
				r.Topics = []kmsg.OffsetDeleteRequestTopic{{Topic: "t", Partitions: []kmsg.OffsetDeleteRequestTopicPartition{{Partition: 1}}}}
			case *kmsg.ApiVersionsRequest:
				r.ClientSoftwareName, r.ClientSoftwareVersion = "fz", "1"
			case *kmsg.OffsetFetchRequest:
				r.Group = group
			case *kmsg.AddPartitionsToTxnRequest:
				r.TransactionalID = *txn
			}
			f.Add(key, v, req.AppendTo(nil))
		}
	}
	f.Fuzz(func(t *testing.T, key, version int16, body []byte) {
		versions, ok := parsedKeys[key]
		if !ok || !knownVersion(key, version) || !versions(version) {
			return
		}
		frame := requestWithBody(key, version, body)
		h, err := parseRequestHeader(frame)
		if err != nil || h.Key != key || h.Version != version || h.BodyStart != len(frame)-len(body) {
			t.Fatalf("the request header of %d v%d does not read back: %+v %v", key, version, h, err)
		}
		orig := bytes.Clone(frame)
		got, herr := handParsed(h, frame)
		if !bytes.Equal(frame, orig) {
			t.Fatalf("%s v%d: the hand parser changed the frame", kmsg.NameForKey(key), version)
		}
		req := kmsg.RequestForKey(key)
		req.SetVersion(version)
		if req.ReadFrom(bytes.Clone(body)) != nil {
			return
		}
		want := kmsgParsed(req)
		// kmsg reads some encodings Kafka refuses (a non-nullable array of negative length, as
		// empty), which the hand parsers may refuse too; what they read, they read as kmsg does,
		// and kmsg's own encoding of the request they always read.
		if herr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%s v%d: the hand parser read\n%+v\nkmsg read\n%+v", kmsg.NameForKey(key), version, got, want)
		}
		canon := requestWithBody(key, version, req.AppendTo(nil))
		h, err = parseRequestHeader(canon)
		if err != nil {
			t.Fatalf("%s v%d: kmsg's encoding's header: %v", kmsg.NameForKey(key), version, err)
		}
		got, herr = handParsed(h, canon)
		if herr != nil {
			t.Fatalf("%s v%d: kmsg's encoding of the request does not read by hand: %v", kmsg.NameForKey(key), version, herr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s v%d: from kmsg's encoding the hand parser read\n%+v\nkmsg read\n%+v", kmsg.NameForKey(key), version, got, want)
		}
	})
}
