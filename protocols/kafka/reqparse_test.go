package kafka

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

func headerOf(t *testing.T, frame []byte) requestHeader {
	t.Helper()
	h, err := parseRequestHeader(frame)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// The hand parsers agree with kmsg's encoder at every version.
func TestParseFetchAllVersions(t *testing.T) {
	id := [16]byte{1, 2, 3}
	for v := int16(0); v <= maxVersion(keyFetch); v++ {
		req := kmsg.NewPtrFetchRequest()
		req.Version = v
		req.IsolationLevel = 1
		req.Topics = []kmsg.FetchRequestTopic{{Topic: "a", TopicID: id, Partitions: []kmsg.FetchRequestTopicPartition{{Partition: 2, FetchOffset: 77}, {Partition: 5, FetchOffset: 9}}}}
		req.ForgottenTopics = []kmsg.FetchRequestForgottenTopic{{Topic: "b", Partitions: []int32{1}}}
		frame := requestFrame(req, 1)
		f, _, err := parseFetch(headerOf(t, frame), frame)
		if err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		k := fetchKey{topic: "a", partition: 2}
		if v >= 13 {
			k = fetchKey{id: id, partition: 2}
		}
		if f.offsets[k] != 77 || len(f.offsets) != 2 || f.readCommitted != (v >= 4) {
			t.Errorf("v%d: %+v", v, f)
		}
	}
}

func TestParseCommitsAllVersions(t *testing.T) {
	id := [16]byte{9}
	for v := int16(0); v <= maxVersion(keyOffsetCommit); v++ {
		req := kmsg.NewPtrOffsetCommitRequest()
		req.Version = v
		req.Group = "g1"
		md := "m"
		req.Topics = []kmsg.OffsetCommitRequestTopic{{Topic: "t", TopicID: id, Partitions: []kmsg.OffsetCommitRequestTopicPartition{{Partition: 3, Offset: 42, Metadata: &md}}}}
		frame := requestFrame(req, 1)
		f, err := parseOffsetCommit(headerOf(t, frame), frame)
		if err != nil {
			t.Fatalf("OffsetCommit v%d: %v", v, err)
		}
		c := f.offsets[0]
		if f.group != "g1" || len(f.offsets) != 1 || c.partition != 3 || c.offset != 42 || (v >= 10) != (c.topicID == id) || (v < 10) != (c.topic == "t") {
			t.Errorf("OffsetCommit v%d: %+v", v, f)
		}
	}
	for v := int16(0); v <= maxVersion(keyTxnOffsetCommit); v++ {
		req := kmsg.NewPtrTxnOffsetCommitRequest()
		req.Version = v
		req.TransactionalID = "tx"
		req.Group = "g2"
		req.ProducerID, req.ProducerEpoch = 77, 3
		req.Topics = []kmsg.TxnOffsetCommitRequestTopic{{Topic: "t", TopicID: id, Partitions: []kmsg.TxnOffsetCommitRequestTopicPartition{{Partition: 1, Offset: 7}}}}
		frame := requestFrame(req, 1)
		f, err := parseTxnOffsetCommit(headerOf(t, frame), frame)
		if err != nil {
			t.Fatalf("TxnOffsetCommit v%d: %v", v, err)
		}
		if f.group != "g2" || f.txnID != "tx" || f.producer != (txnProducer{77, 3}) || len(f.offsets) != 1 || f.offsets[0].offset != 7 || (v >= 6) != (f.offsets[0].topicID == id) {
			t.Errorf("TxnOffsetCommit v%d: %+v", v, f)
		}
	}
	for v := int16(0); v <= maxVersion(keyEndTxn); v++ {
		req := kmsg.NewPtrEndTxnRequest()
		req.Version = v
		req.TransactionalID, req.ProducerID, req.ProducerEpoch, req.Commit = "tx", 77, 3, true
		frame := requestFrame(req, 1)
		f, err := parseEndTxn(headerOf(t, frame), frame)
		if err != nil || f != (endTxnFacts{txnID: "tx", producer: txnProducer{77, 3}, commit: true}) {
			t.Errorf("EndTxn v%d: %+v %v", v, f, err)
		}
	}
}

func TestParseGroupHeartbeat(t *testing.T) {
	req := kmsg.NewPtrConsumerGroupHeartbeatRequest()
	req.Group, req.MemberID, req.MemberEpoch = "g", "member-1", -1
	for v := int16(0); v <= maxVersion(keyCGHeartbeat); v++ {
		req.SetVersion(v)
		frame := requestFrame(req, 1)
		if g, epoch, err := parseGroupHeartbeat(headerOf(t, frame), frame); err != nil || g.group != "g" || g.member != "member-1" || epoch != -1 {
			t.Errorf("v%d: %+v %d %v", v, g, epoch, err)
		}
	}
}

func TestParseSyncAndLeaveGroup(t *testing.T) {
	sync := kmsg.NewPtrSyncGroupRequest()
	sync.Group, sync.Generation, sync.MemberID = "g", 7, "member-1"
	for v := int16(0); v <= maxVersion(keySyncGroup); v++ {
		sync.SetVersion(v)
		frame := requestFrame(sync, 1)
		if m, err := parseSyncGroup(headerOf(t, frame), frame); err != nil || m != (groupMember{"g", "member-1", 7}) {
			t.Errorf("SyncGroup v%d: %+v %v", v, m, err)
		}
	}
	leave := kmsg.NewPtrLeaveGroupRequest()
	leave.Group, leave.MemberID = "g", "member-1"
	reason := "bye"
	leave.Members = []kmsg.LeaveGroupRequestMember{{MemberID: "member-1", Reason: &reason}, {MemberID: "member-2"}}
	for v := int16(0); v <= maxVersion(keyLeaveGroup); v++ {
		leave.SetVersion(v)
		frame := requestFrame(leave, 1)
		want := []string{"member-1", "member-2"}
		if v < 3 {
			want = want[:1]
		}
		if l, err := parseLeaveGroup(headerOf(t, frame), frame); err != nil || l.group != "g" || !slices.Equal(l.members, want) {
			t.Errorf("LeaveGroup v%d: %+v %v", v, l, err)
		}
	}
}

func TestParseFirstString(t *testing.T) {
	reqs := []kmsg.Request{&kmsg.JoinGroupRequest{Group: "jg"}, &kmsg.SyncGroupRequest{Group: "jg"},
		&kmsg.ConsumerGroupHeartbeatRequest{Group: "jg"}, &kmsg.SASLHandshakeRequest{Mechanism: "jg"}}
	for _, req := range reqs {
		for v := int16(0); v <= req.MaxVersion(); v++ {
			req.SetVersion(v)
			frame := requestFrame(req, 1)
			if got, err := parseFirstString(headerOf(t, frame), frame); err != nil || got != "jg" {
				t.Errorf("%s v%d: %q %v", kmsg.NameForKey(req.Key()), v, got, err)
			}
		}
	}
	api := &kmsg.ApiVersionsRequest{Version: 3, ClientSoftwareName: "jg"}
	frame := requestFrame(api, 1)
	if got, _ := parseFirstString(headerOf(t, frame), frame); got != "jg" {
		t.Errorf("ApiVersions: %q", got)
	}
}

// TestDropRack: while a node's listener is missing, a Fetch request's rack id goes upstream empty
// and every other field as the client sent it, at every version with the field: the request is
// what kmsg encodes for the same request with no rack, through forgotten topics, the tagged
// fields after the rack (cluster id, replica state, unknown tags) and partition tags. With every
// listener open, or with no rack, the request goes as it is.
func TestDropRack(t *testing.T) {
	id := [16]byte{4, 5}
	for v := int16(0); v <= maxVersion(keyFetch); v++ {
		for _, rack := range []string{"us-east-1a", "r", ""} {
			req := kmsg.NewPtrFetchRequest()
			req.Version = v
			req.SessionID, req.SessionEpoch = 12, 3
			req.Topics = []kmsg.FetchRequestTopic{{Topic: "a", TopicID: id, Partitions: []kmsg.FetchRequestTopicPartition{{Partition: 2, FetchOffset: 77}}}}
			req.ForgottenTopics = []kmsg.FetchRequestForgottenTopic{{Topic: "b", TopicID: id, Partitions: []int32{1}}}
			req.Rack = rack
			cluster := "cluster"
			req.ClusterID = &cluster
			req.ReplicaState.Epoch = 9
			req.UnknownTags.Set(7, []byte("tag"))
			req.Topics[0].Partitions[0].UnknownTags.Set(5, []byte("p"))
			frame := requestFrame(req, 7)
			req.Rack = ""
			want := requestFrame(req, 7)
			if v < 11 || rack == "" {
				want = frame
			}
			for _, missing := range []bool{false, true} {
				s := offlineSession(t)
				if missing {
					s.p.nodeProblems[0] = errors.New("node 0's listener could not open")
				}
				in := bytes.Clone(frame)
				out, pd := s.handleRequest(headerOf(t, in), in)
				exp := frame
				if missing {
					exp = want
				}
				if !bytes.Equal(out, exp) {
					t.Errorf("v%d rack %q, listener missing %v: forwarded\n%x\nwant\n%x", v, rack, missing, out, exp)
				}
				k := fetchKey{topic: "a", partition: 2}
				if v >= 13 {
					k = fetchKey{id: id, partition: 2}
				}
				if f, ok := pd.facts.(*fetchFacts); !ok || f.offsets[k] != 77 {
					t.Errorf("v%d rack %q, listener missing %v: facts %+v", v, rack, missing, pd.facts)
				}
			}
		}
	}
}

// TestParseFetchRackNoAlloc: finding a fetch request's rack id costs no allocation. Every fetch
// of a consumer with client.rack set is parsed, whether or not a node is left out, and only
// where the id lies is needed, not a copy of it.
func TestParseFetchRackNoAlloc(t *testing.T) {
	for _, v := range []int16{11, maxVersion(keyFetch)} { // the first with the field, and flexible
		allocs := map[string]float64{}
		for _, rack := range []string{"", "us-east-1a"} {
			req := kmsg.NewPtrFetchRequest()
			req.Version = v
			req.Topics = []kmsg.FetchRequestTopic{{Topic: "a", TopicID: [16]byte{1}, Partitions: []kmsg.FetchRequestTopicPartition{{Partition: 2, FetchOffset: 77}}}}
			req.Rack = rack
			frame := requestFrame(req, 1)
			h := headerOf(t, frame)
			allocs[rack] = testing.AllocsPerRun(50, func() { _, _, _ = parseFetch(h, frame) })
		}
		if allocs["us-east-1a"] != allocs[""] {
			t.Errorf("v%d: parseFetch allocates %.0f times with a rack id, %.0f without", v, allocs["us-east-1a"], allocs[""])
		}
	}
}

// TestParseCoordinatorRequests reads what the coordinator and transaction answers do not say, at
// every version kmsg knows.
func TestParseCoordinatorRequests(t *testing.T) {
	for v := int16(0); v <= maxVersion(keyFindCoordinator); v++ {
		req := kmsg.NewPtrFindCoordinatorRequest()
		req.Version, req.CoordinatorKey, req.CoordinatorKeys, req.CoordinatorType = v, "tx", []string{"tx"}, 1
		frame := requestFrame(req, 1)
		want := coordinatorKey{key: "tx", keyType: 1}
		switch {
		case v == 0:
			want = coordinatorKey{key: "tx"}
		case v >= 4:
			want = coordinatorKey{keyType: 1} // the answer echoes each key
		}
		if k, err := parseFindCoordinator(headerOf(t, frame), frame); err != nil || k != want {
			t.Errorf("FindCoordinator v%d: %+v %v, want %+v", v, k, err, want)
		}
	}
	for v := int16(0); v <= maxVersion(keyInitProducerID); v++ {
		for _, id := range []*string{kmsg.StringPtr("tx"), nil} {
			req := kmsg.NewPtrInitProducerIDRequest()
			req.Version, req.TransactionalID = v, id
			frame := requestFrame(req, 1)
			want := txnFacts{}
			if id != nil {
				want.txnID = *id
			}
			if f, err := parseInitProducerID(headerOf(t, frame), frame); err != nil || f != want {
				t.Errorf("InitProducerID v%d: %+v %v, want %+v", v, f, err, want)
			}
		}
	}
	for v := int16(0); v <= maxVersion(keyAddOffsetsToTxn); v++ {
		req := kmsg.NewPtrAddOffsetsToTxnRequest()
		req.Version, req.TransactionalID, req.ProducerID, req.ProducerEpoch, req.Group = v, "tx", 77, 3, "g"
		frame := requestFrame(req, 1)
		if f, err := parseAddOffsetsToTxn(headerOf(t, frame), frame); err != nil || f != (txnFacts{txnID: "tx", group: "g"}) {
			t.Errorf("AddOffsetsToTxn v%d: %+v %v", v, f, err)
		}
	}
	for _, req := range []kmsg.Request{&kmsg.OffsetFetchRequest{Group: "jg"}, &kmsg.AddPartitionsToTxnRequest{TransactionalID: "jg"}} {
		for v := int16(0); v <= req.MaxVersion(); v++ {
			if req.Key() == keyOffsetFetch && v >= 8 || req.Key() == keyAddPartitionsToTxn && v >= 4 {
				break // the answer names it (OffsetFetch), or the form brokers send (AddPartitionsToTxn)
			}
			req.SetVersion(v)
			frame := requestFrame(req, 1)
			if got, err := parseFirstString(headerOf(t, frame), frame); err != nil || got != "jg" {
				t.Errorf("%s v%d: %q %v", kmsg.NameForKey(req.Key()), v, got, err)
			}
		}
	}
}
