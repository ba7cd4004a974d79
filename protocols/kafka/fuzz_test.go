package kafka

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// offlineSession is a session with no connections, for fuzzing and benchmarks of the request and
// response handlers. Its proxy is not started, so address rewrites fail (and close the connection
// in real use) instead of opening listeners.
func offlineSession(t testing.TB) *session {
	t.Helper()
	p, err := New(Config{Listen: "127.0.0.1:0", Bootstrap: []string{"127.0.0.1:1"}, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	s := &session{p: p, log: zerolog.Nop(), idle: make(chan struct{}, 1), respClosed: make(chan struct{})}
	s.addr = netip.MustParseAddr("127.0.0.1")
	s.info.Store(&clientInfo{clientID: "fuzz", addr: s.addr, service: "fuzz"})
	return s
}

func FuzzRequestFrame(f *testing.F) {
	for _, frame := range goldenProduces(f) {
		f.Add(frame)
	}
	for _, api := range []string{"fetch", "offsetcommit", "joingroup", "syncgroup"} { // real clients' group requests
		for _, frame := range goldenOf(f, api) {
			f.Add(frame)
		}
	}
	for _, req := range []kmsg.Request{kmsg.NewPtrFetchRequest(), kmsg.NewPtrOffsetCommitRequest(), kmsg.NewPtrTxnOffsetCommitRequest(),
		kmsg.NewPtrJoinGroupRequest(), kmsg.NewPtrSyncGroupRequest(), kmsg.NewPtrConsumerGroupHeartbeatRequest(),
		kmsg.NewPtrSASLHandshakeRequest(), kmsg.NewPtrApiVersionsRequest(), kmsg.NewPtrProduceRequest(),
		kmsg.NewPtrHeartbeatRequest(), kmsg.NewPtrLeaveGroupRequest(), kmsg.NewPtrEndTxnRequest(), kmsg.NewPtrShareFetchRequest(),
		kmsg.NewPtrFindCoordinatorRequest(), kmsg.NewPtrOffsetFetchRequest(), kmsg.NewPtrInitProducerIDRequest(),
		kmsg.NewPtrAddPartitionsToTxnRequest(), kmsg.NewPtrAddOffsetsToTxnRequest()} {
		for _, v := range []int16{0, req.MaxVersion()} {
			req.SetVersion(v)
			f.Add(requestFrame(req, 1))
		}
	}
	for _, v := range []int16{11, maxVersion(keyFetch)} { // a rack id to drop (dropRack)
		req := kmsg.NewPtrFetchRequest()
		req.SetVersion(v)
		req.Topics = []kmsg.FetchRequestTopic{{Topic: "t", Partitions: []kmsg.FetchRequestTopicPartition{{Partition: 1}}}}
		req.Rack = "rack-a"
		f.Add(requestFrame(req, 1))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 4 {
			return
		}
		// The fuzzer's input must stay as it was given, or a crasher is saved other than it ran.
		frame = append([]byte(nil), frame...)
		putSize(frame)
		s := offlineSession(t)
		// A node left out: fetch requests' rack ids are dropped.
		s.p.nodeProblems[0] = errors.New("node 0's listener could not open")
		h, err := parseRequestHeader(frame)
		if err != nil {
			return
		}
		if h.BodyStart > len(frame) {
			t.Fatalf("body start %d past frame %d", h.BodyStart, len(frame))
		}
		orig := bytes.Clone(frame)
		out, pd := s.handleRequest(h, frame)
		if len(out) < 12 || int(binary.BigEndian.Uint32(out))+4 != len(out) {
			t.Fatalf("forwarded frame with bad size prefix")
		}
		if pd != nil && pd.corr != h.CorrID {
			t.Fatalf("pending corr %d, header %d", pd.corr, h.CorrID)
		}
		if h.Key == keyFetch && knownVersion(h.Key, h.Version) {
			checkDroppedRack(t, h, orig, out)
		}
	})
}

// checkDroppedRack: a Fetch request forwarded is the client's, or it with its rack id emptied:
// it reads as the client's did, with no rack id, and no other byte changed.
func checkDroppedRack(t *testing.T, h requestHeader, in, out []byte) {
	t.Helper()
	f, rack, err := parseFetch(h, in)
	if err != nil || rack == [2]int{} {
		if !bytes.Equal(out, in) {
			t.Fatalf("a fetch request with no rack id to drop (%v) was changed", err)
		}
		return
	}
	h2, err := parseRequestHeader(out)
	if err != nil {
		t.Fatalf("the forwarded fetch request's header: %v", err)
	}
	f2, rack2, err := parseFetch(h2, out)
	if err != nil || rack2 != [2]int{} || !reflect.DeepEqual(f.offsets, f2.offsets) || !reflect.DeepEqual(f.forgotten, f2.forgotten) ||
		f.sessionEpoch != f2.sessionEpoch || f.readCommitted != f2.readCommitted {
		t.Fatalf("the forwarded fetch request reads otherwise: %v, rack %v, %+v, want %+v", err, rack2, f2, f)
	}
	empty := 2
	if h.Flexible {
		empty = 1
	}
	if !bytes.Equal(out[4:rack[0]], in[4:rack[0]]) || !bytes.Equal(out[rack[0]+empty:], in[rack[1]:]) {
		t.Fatalf("the forwarded fetch request changed outside its rack id")
	}
}

// fuzzTopicID is a topic id FuzzResponse's proxy knows.
var fuzzTopicID = [16]byte{0xf}

func FuzzResponse(f *testing.F) {
	for _, key := range []int16{keyProduce, keyFetch, keyMetadata, keyOffsetCommit, keyFindCoordinator, keySyncGroup,
		keySaslHandshake, keyApiVersions, keyTxnOffsetCommit, keyDescribeCluster, keyCGHeartbeat, keyShareFetch, keyShareAck,
		keyListOffsets, keyJoinGroup, keyHeartbeat, keyLeaveGroup, keyEndTxn, keyOffsetFetch, keyInitProducerID,
		keyAddPartitionsToTxn, keyAddOffsetsToTxn} {
		resp := kmsg.ResponseForKey(key)
		for _, v := range []int16{0, resp.MaxVersion()} {
			resp.SetVersion(v)
			frame := make([]byte, 8, 64)
			binary.BigEndian.PutUint32(frame[4:], 1)
			if resp.IsFlexible() && key != keyApiVersions {
				frame = append(frame, 0)
			}
			frame = resp.AppendTo(frame)
			putSize(frame)
			f.Add(key, v, frame)
		}
	}
	f.Add(keyMetadata, int16(13), endlessTags)
	// Answers the proxy edits: node addresses, leader hints, versions.
	for _, resp := range editedAnswers() {
		frame := make([]byte, 8, 256)
		binary.BigEndian.PutUint32(frame[4:], 1)
		if resp.IsFlexible() && resp.Key() != keyApiVersions {
			frame = append(frame, 0)
		}
		frame = resp.AppendTo(frame)
		putSize(frame)
		f.Add(resp.Key(), resp.GetVersion(), frame)
	}
	// A share fetch of records on the topic id s knows (fuzzTopicID), in two acquired ranges.
	share := kmsg.NewPtrShareFetchResponse()
	share.SetVersion(share.MaxVersion())
	share.Topics = []kmsg.ShareFetchResponseTopic{{TopicID: fuzzTopicID, Partitions: []kmsg.ShareFetchResponseTopicPartition{{
		Records:         buildBatchHeader(f, 6, 8, nil, pathway.HeaderKey, pathway.Context{Hash: 7}.AppendBase64(nil)),
		AcquiredRecords: []kmsg.ShareFetchResponseTopicPartitionAcquiredRecord{{FirstOffset: 4, LastOffset: 5, DeliveryCount: 1}, {FirstOffset: 0, LastOffset: 1, DeliveryCount: 3}},
	}}}}
	shareFrame := append(binary.BigEndian.AppendUint32(make([]byte, 4), 1), 0)
	shareFrame = share.AppendTo(shareFrame)
	putSize(shareFrame)
	f.Add(keyShareFetch, share.MaxVersion(), shareFrame)
	f.Fuzz(func(t *testing.T, key, version int16, frame []byte) {
		if len(frame) < 8 || !interesting(key) || !knownVersion(key, version) {
			return
		}
		frame = append([]byte(nil), frame...)
		putSize(frame)
		s := offlineSession(t)
		s.p.topics.put(fuzzTopicID, "fuzz") // so that records named by it are walked
		pd := &pending{corr: int32(binary.BigEndian.Uint32(frame[4:])), key: key, version: version, flexible: isFlexible(key, version)}
		switch key { // what their requests would have left, so that the answers are read
		case keyFindCoordinator:
			pd.facts = coordinatorKey{key: "k", keyType: int8(version % 3)}
		case keyOffsetFetch:
			pd.facts = offsetFetchGroup("g")
		case keyInitProducerID, keyAddPartitionsToTxn, keyAddOffsetsToTxn:
			pd.facts = txnFacts{txnID: "tx", group: "g"}
		}
		orig := bytes.Clone(frame)
		out, after, err := s.handleResponse(pd, frame)
		if err != nil {
			return
		}
		if len(out) < 8 || int(binary.BigEndian.Uint32(out))+4 != len(out) {
			t.Fatalf("forwarded response with bad size prefix")
		}
		checkAnswerEdits(t, pd, orig, frame, out)
		if after != nil {
			after()
			close(s.p.observeQ)
			s.p.observeLoop()
		}
	})
}

// editedAnswers are answers FuzzResponse's offline proxy edits, at the newest versions.
func editedAnswers() []kmsg.Response {
	meta := kmsg.NewPtrMetadataResponse()
	meta.SetVersion(meta.MaxVersion())
	cluster := "c"
	meta.ClusterID, meta.ControllerID = &cluster, 1
	meta.Brokers = []kmsg.MetadataResponseBroker{{NodeID: 1, Host: "b1", Port: 9092}, {NodeID: 2, Host: "b2", Port: 9092}}
	meta.Topics = []kmsg.MetadataResponseTopic{{Topic: kmsg.StringPtr("t"), TopicID: fuzzTopicID, Partitions: []kmsg.MetadataResponseTopicPartition{
		{Partition: 0, Leader: 1, Replicas: []int32{1, 2}, ISR: []int32{1, 2}}, {Partition: 1, Leader: 2, ErrorCode: 9, Replicas: []int32{2}, ISR: []int32{2}}}}}
	apis := kmsg.NewPtrApiVersionsResponse()
	apis.SetVersion(3)
	apis.ApiKeys = []kmsg.ApiVersionsResponseApiKey{{ApiKey: keyProduce, MinVersion: 0, MaxVersion: 99}, {ApiKey: keyFetch, MinVersion: 4, MaxVersion: 12},
		{ApiKey: 9999, MinVersion: 0, MaxVersion: 1}, {ApiKey: keyMetadata, MinVersion: 0, MaxVersion: 99}}
	coord := kmsg.NewPtrFindCoordinatorResponse()
	coord.SetVersion(coord.MaxVersion())
	coord.Coordinators = []kmsg.FindCoordinatorResponseCoordinator{{Key: "g", NodeID: 1, Host: "b1", Port: 9092}, {Key: "h", ErrorCode: 15, NodeID: -1, Port: -1}}
	produce := kmsg.NewPtrProduceResponse()
	produce.SetVersion(produce.MaxVersion())
	produce.Topics = []kmsg.ProduceResponseTopic{{Topic: "t", TopicID: fuzzTopicID, Partitions: []kmsg.ProduceResponseTopicPartition{
		{Partition: 0, ErrorCode: 6, BaseOffset: -1, CurrentLeader: kmsg.ProduceResponseTopicPartitionCurrentLeader{LeaderID: 2, LeaderEpoch: 4}}}}}
	produce.Brokers = []kmsg.ProduceResponseBroker{{NodeID: 2, Host: "b2", Port: 9092}}
	fetch := kmsg.NewPtrFetchResponse()
	fetch.SetVersion(fetch.MaxVersion())
	fetch.Topics = []kmsg.FetchResponseTopic{{Topic: "t", TopicID: fuzzTopicID, Partitions: []kmsg.FetchResponseTopicPartition{
		{Partition: 0, HighWatermark: 5, PreferredReadReplica: 2, RecordBatches: []byte("records")},
		{Partition: 1, ErrorCode: 6, CurrentLeader: kmsg.FetchResponseTopicPartitionCurrentLeader{LeaderID: 2, LeaderEpoch: 4}}}}}
	fetch.Brokers = []kmsg.FetchResponseBroker{{NodeID: 2, Host: "b2", Port: 9092}}
	cl := kmsg.NewPtrDescribeClusterResponse()
	cl.SetVersion(cl.MaxVersion())
	cl.ClusterID, cl.ControllerID = "c", 2
	cl.Brokers = []kmsg.DescribeClusterResponseBroker{{NodeID: 2, Host: "b2", Port: 9092}}
	return []kmsg.Response{meta, apis, coord, produce, fetch, cl}
}

// answerEditors are the APIs whose answers the proxy may forward other than they came: node
// addresses (and the leader hints and replica sets naming nodes it leaves out), ApiVersions'
// versions, Fetch's preferred read replicas.
var answerEditors = map[int16]bool{keyApiVersions: true, keyMetadata: true, keyFindCoordinator: true, keyDescribeCluster: true,
	keyProduce: true, keyFetch: true, keyShareFetch: true, keyShareAck: true}

// checkAnswerEdits: an answer (orig; frame after handleResponse had it) goes to the client byte
// for byte, or, for the APIs in answerEditors, as the same answer at the same version with the
// same header, but for what those APIs edit. Only a Fetch answer is edited in place (its
// preferred read replicas, which FuzzClearLeftOutReplicas checks byte by byte).
func checkAnswerEdits(t *testing.T, pd *pending, orig, frame, out []byte) {
	t.Helper()
	name := kmsg.NameForKey(pd.key)
	if pd.key != keyFetch && !bytes.Equal(frame, orig) {
		t.Fatalf("%s v%d: the answer was changed in place", name, pd.version)
	}
	if bytes.Equal(out, orig) {
		return
	}
	if !answerEditors[pd.key] {
		t.Fatalf("%s v%d: an answer the proxy only reads went on changed:\nin  %x\nout %x", name, pd.version, orig, out)
	}
	start, err := responseBodyStart(orig, pd.key, pd.flexible)
	if err != nil || len(out) < start || !bytes.Equal(out[4:start], orig[4:start]) {
		t.Fatalf("%s v%d: the answer's header changed (%v):\nin  %x\nout %x", name, pd.version, err, orig, out)
	}
	before, after := kmsg.ResponseForKey(pd.key), kmsg.ResponseForKey(pd.key)
	before.SetVersion(pd.version)
	after.SetVersion(pd.version)
	if err := before.ReadFrom(orig[start:]); err != nil {
		if pd.key == keyFetch {
			return // edited in place where it could be walked, not decoded
		}
		t.Fatalf("%s v%d: an answer kmsg cannot read (%v) went on changed", name, pd.version, err)
	}
	if err := after.ReadFrom(out[start:]); err != nil {
		t.Fatalf("%s v%d: the answer read before the proxy edited it, not after: %v\nin  %x\nout %x", name, pd.version, err, orig, out)
	}
	sameButEdits(t, before, after)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("%s v%d: the proxy changed more than it edits:\nbefore %+v\nafter  %+v", name, pd.version, before, after)
	}
}

// sameButEdits checks what the proxy may do to after's fields that tell of nodes and versions,
// and sets them as they are in before.
func sameButEdits(t *testing.T, before, after kmsg.Response) {
	t.Helper()
	leader := func(b, a *int32, be, ae *int32) { // a KIP-951 hint is kept, or cleared
		if *a != *b && *a != -1 || *ae != *be && *ae != -1 {
			t.Fatalf("leader hint %d (epoch %d) became %d (epoch %d)", *b, *be, *a, *ae)
		}
		*a, *ae = *b, *be
	}
	switch a := after.(type) {
	case *kmsg.ApiVersionsResponse:
		b := before.(*kmsg.ApiVersionsResponse)
		// The broker's list, in its order, less the APIs kmsg does not know.
		j := 0
		for _, bk := range b.ApiKeys {
			max := maxVersion(bk.ApiKey)
			if max < 0 {
				continue
			}
			if j >= len(a.ApiKeys) {
				t.Fatalf("API %d left out of %v, the broker's %v", bk.ApiKey, a.ApiKeys, b.ApiKeys)
			}
			k := a.ApiKeys[j]
			j++
			if k.ApiKey != bk.ApiKey || k.MinVersion != bk.MinVersion || k.MaxVersion > bk.MaxVersion {
				t.Fatalf("API %d advertised as %+v, the broker's %+v", bk.ApiKey, k, bk)
			}
			// A client may use only versions the proxy reads, where capping need not raise the minimum.
			if decodedKeys[k.ApiKey] && k.MaxVersion > max && max >= k.MinVersion {
				t.Fatalf("API %d advertised up to v%d, the proxy reads up to v%d", k.ApiKey, k.MaxVersion, max)
			}
		}
		if j != len(a.ApiKeys) {
			t.Fatalf("APIs %v advertised, the broker's %v", a.ApiKeys, b.ApiKeys)
		}
		a.ApiKeys = b.ApiKeys
	case *kmsg.MetadataResponse:
		b := before.(*kmsg.MetadataResponse)
		a.Brokers, a.ControllerID = b.Brokers, b.ControllerID
		for i := range a.Topics {
			for j := range a.Topics[i].Partitions {
				if i >= len(b.Topics) || j >= len(b.Topics[i].Partitions) {
					return
				}
				ap, bp := &a.Topics[i].Partitions[j], &b.Topics[i].Partitions[j]
				if ap.Leader != bp.Leader && ap.Leader != -1 || ap.ErrorCode != bp.ErrorCode && ap.ErrorCode != kerr.LeaderNotAvailable.Code {
					t.Fatalf("partition leader %d (error %d) became %d (error %d)", bp.Leader, bp.ErrorCode, ap.Leader, ap.ErrorCode)
				}
				ap.Leader, ap.ErrorCode, ap.ISR, ap.OfflineReplicas = bp.Leader, bp.ErrorCode, bp.ISR, bp.OfflineReplicas
			}
		}
	case *kmsg.FindCoordinatorResponse:
		b := before.(*kmsg.FindCoordinatorResponse)
		a.ErrorCode, a.ErrorMessage, a.NodeID, a.Host, a.Port = b.ErrorCode, b.ErrorMessage, b.NodeID, b.Host, b.Port
		for i := range a.Coordinators {
			if i >= len(b.Coordinators) {
				return
			}
			c, bc := &a.Coordinators[i], &b.Coordinators[i]
			c.ErrorCode, c.ErrorMessage, c.NodeID, c.Host, c.Port = bc.ErrorCode, bc.ErrorMessage, bc.NodeID, bc.Host, bc.Port
		}
	case *kmsg.DescribeClusterResponse:
		b := before.(*kmsg.DescribeClusterResponse)
		a.Brokers, a.ControllerID = b.Brokers, b.ControllerID
	case *kmsg.ProduceResponse:
		b := before.(*kmsg.ProduceResponse)
		a.Brokers = b.Brokers
		for i := range a.Topics {
			for j := range a.Topics[i].Partitions {
				if i < len(b.Topics) && j < len(b.Topics[i].Partitions) {
					al, bl := &a.Topics[i].Partitions[j].CurrentLeader, &b.Topics[i].Partitions[j].CurrentLeader
					leader(&bl.LeaderID, &al.LeaderID, &bl.LeaderEpoch, &al.LeaderEpoch)
				}
			}
		}
	case *kmsg.FetchResponse:
		b := before.(*kmsg.FetchResponse)
		a.Brokers = b.Brokers
		for i := range a.Topics {
			for j := range a.Topics[i].Partitions {
				if i < len(b.Topics) && j < len(b.Topics[i].Partitions) {
					ap, bp := &a.Topics[i].Partitions[j], &b.Topics[i].Partitions[j]
					leader(&bp.CurrentLeader.LeaderID, &ap.CurrentLeader.LeaderID, &bp.CurrentLeader.LeaderEpoch, &ap.CurrentLeader.LeaderEpoch)
					if ap.PreferredReadReplica != bp.PreferredReadReplica && ap.PreferredReadReplica != -1 {
						t.Fatalf("preferred read replica %d became %d", bp.PreferredReadReplica, ap.PreferredReadReplica)
					}
					ap.PreferredReadReplica = bp.PreferredReadReplica
				}
			}
		}
	case *kmsg.ShareFetchResponse:
		b := before.(*kmsg.ShareFetchResponse)
		a.NodeEndpoints = b.NodeEndpoints
		for i := range a.Topics {
			for j := range a.Topics[i].Partitions {
				if i < len(b.Topics) && j < len(b.Topics[i].Partitions) {
					al, bl := &a.Topics[i].Partitions[j].CurrentLeader, &b.Topics[i].Partitions[j].CurrentLeader
					leader(&bl.LeaderID, &al.LeaderID, &bl.LeaderEpoch, &al.LeaderEpoch)
				}
			}
		}
	case *kmsg.ShareAcknowledgeResponse:
		b := before.(*kmsg.ShareAcknowledgeResponse)
		a.NodeEndpoints = b.NodeEndpoints
		for i := range a.Topics {
			for j := range a.Topics[i].Partitions {
				if i < len(b.Topics) && j < len(b.Topics[i].Partitions) {
					al, bl := &a.Topics[i].Partitions[j].CurrentLeader, &b.Topics[i].Partitions[j].CurrentLeader
					leader(&bl.LeaderID, &al.LeaderID, &bl.LeaderEpoch, &al.LeaderEpoch)
				}
			}
		}
	}
}

// endlessTags is a Metadata v13 answer whose last tagged-field count says 2^32-1 with nothing
// after it. kmsg before v1.15.1 looped over that count past the end of the data: about a minute
// of CPU for these 29 bytes, on the connection's response path.
var endlessTags = []byte("\x00\x00\x00\x19\x00\x00\x00\x01\x00\x00\x00\x00\x00\x02\x00\x00\x00\x01\x01\x00\x00\x00\x00\x00\xff\xff\xff\xff\x0f")

// TestEndlessTaggedFieldCount: a broker answer with an absurd tagged-field count is decoded (or
// refused) at once; the connection's answers do not wait on it.
func TestEndlessTaggedFieldCount(t *testing.T) {
	s := offlineSession(t)
	pd := &pending{corr: 1, key: keyMetadata, version: 13, flexible: true}
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, _, err := s.handleResponse(pd, append([]byte(nil), endlessTags...))
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		if r.err == nil && !bytes.Equal(r.out, endlessTags) {
			t.Errorf("an undecodable answer was changed: %x", r.out)
		}
	case <-time.After(20 * time.Second): // microseconds when the decoder stops at the data's end
		t.Fatal("decoding 29 bytes still runs after 20 s: the tagged-field loop does not stop at the end of the data")
	}
}

// FuzzClearLeftOutReplicas: the in-place walk that clears preferred read replicas naming a node
// left out (left: a bit per node 0..7) never panics and never changes the length; every byte it
// changes is in a 4-byte field that held a left-out node id and now holds -1, one field per
// replica it says it cleared. An answer kmsg decodes at that version is walked through, and
// decodes after the walk to the same answer but for those replicas, each left-out one now -1.
func FuzzClearLeftOutReplicas(f *testing.F) {
	for v := int16(11); v <= 18; v++ {
		for _, resp := range fuzzFetchAnswers(f, v) {
			body := resp.AppendTo(nil)
			f.Add(v, uint8(0b1000_0101), body) // nodes 0, 2 and 7 left out
			f.Add(v, uint8(0xff), body)
		}
	}
	f.Add(int16(12), uint8(1), []byte{})
	f.Fuzz(func(t *testing.T, version int16, left uint8, in []byte) {
		if version < 0 || version > kmsg.NewPtrFetchResponse().MaxVersion() {
			return
		}
		leftOut := func(id int32) bool { return id >= 0 && id < 8 && left&(1<<id) != 0 }
		body := bytes.Clone(in) // the fuzzer's input must stay as it was given
		cleared, ok := clearLeftOutReplicas(body, version, leftOut)
		if len(body) != len(in) {
			t.Fatalf("v%d: %d bytes became %d", version, len(in), len(body))
		}
		// A left-out id is not negative, so a cleared field's first byte always changes (to 0xff).
		fields := 0
		for i := 0; i < len(body); i++ {
			if body[i] == in[i] {
				continue
			}
			if i+4 > len(body) || binary.BigEndian.Uint32(body[i:]) != 0xffffffff || !leftOut(int32(binary.BigEndian.Uint32(in[i:]))) {
				t.Fatalf("v%d: byte %d changed from %#x to %#x, not in a left-out replica cleared to -1", version, i, in[i], body[i])
			}
			fields++
			i += 3
		}
		if fields != cleared {
			t.Fatalf("v%d: %d fields changed, the walk says it cleared %d", version, fields, cleared)
		}
		before := kmsg.NewPtrFetchResponse()
		before.SetVersion(version)
		if before.ReadFrom(in) != nil {
			return
		}
		if !ok {
			t.Fatalf("v%d: kmsg decodes the answer, the walk did not get through it", version)
		}
		after := kmsg.NewPtrFetchResponse()
		after.SetVersion(version)
		if err := after.ReadFrom(body); err != nil {
			t.Fatalf("v%d: the answer decoded before the walk, not after: %v", version, err)
		}
		if len(after.Topics) != len(before.Topics) {
			t.Fatalf("v%d: %d topics before the walk, %d after", version, len(before.Topics), len(after.Topics))
		}
		changed := 0
		for ti := range after.Topics {
			pb, pa := before.Topics[ti].Partitions, after.Topics[ti].Partitions
			if len(pa) != len(pb) {
				t.Fatalf("v%d topic %d: %d partitions before the walk, %d after", version, ti, len(pb), len(pa))
			}
			for pi := range pa {
				want := pb[pi].PreferredReadReplica
				if version >= 11 && leftOut(want) {
					want = -1
				}
				if pa[pi].PreferredReadReplica != want {
					t.Fatalf("v%d topic %d partition %d: preferred replica %d became %d, want %d", version, ti, pi, pb[pi].PreferredReadReplica, pa[pi].PreferredReadReplica, want)
				}
				if pa[pi].PreferredReadReplica != pb[pi].PreferredReadReplica {
					changed++
				}
				pa[pi].PreferredReadReplica = pb[pi].PreferredReadReplica
			}
		}
		if changed != cleared {
			t.Fatalf("v%d: %d preferred replicas changed, the walk says it cleared %d", version, changed, cleared)
		}
		if !reflect.DeepEqual(before, after) {
			t.Fatalf("v%d: the walk changed more than preferred replicas:\nbefore %+v\nafter  %+v", version, before, after)
		}
	})
}

// fuzzFetchAnswers are Fetch answers at version v for FuzzClearLeftOutReplicas: partitions with
// and without aborted transactions and records (null, empty, one and two batches), preferred
// replicas naming nodes left out or not (0..7), none (-1) and a node the fuzzer never leaves out
// (1000), the partition tagged fields and the brokers of v16+, and unknown tags where flexible.
// They are kept small (about 600 bytes, not 2.4 KB): the walk skips records by their length, so
// a few bytes stand for a batch, and every new input the fuzzer finds from a seed is minimized,
// which for kilobytes took most of make fuzz's 60 s.
func fuzzFetchAnswers(t testing.TB, v int16) []*kmsg.FetchResponse {
	batch := []byte("batch")
	many := kmsg.NewPtrFetchResponse()
	many.SetVersion(v)
	many.SessionID = 9
	for ti, name := range []string{"orders", "p"} {
		rt := kmsg.NewFetchResponseTopic()
		rt.Topic, rt.TopicID = name, [16]byte{byte(ti + 1), 0xee}
		for pi, rep := range [][]int32{{0, 1, -1, 7}, {2, 1000, 5, 0}}[ti] {
			pt := kmsg.NewFetchResponseTopicPartition()
			pt.Partition, pt.HighWatermark, pt.LastStableOffset, pt.LogStartOffset = int32(pi), 100, 90, 3
			pt.PreferredReadReplica = rep
			switch pi % 4 {
			case 0:
				pt.AbortedTransactions = []kmsg.FetchResponseTopicPartitionAbortedTransaction{{ProducerID: 5, FirstOffset: 6}, {ProducerID: 7, FirstOffset: 8}}
				pt.RecordBatches = batch
			case 1:
				pt.RecordBatches = []byte{} // empty, not null
				pt.AbortedTransactions = []kmsg.FetchResponseTopicPartitionAbortedTransaction{}
			case 2:
				pt.RecordBatches = append(bytes.Clone(batch), batch...)
			}
			if v >= 12 && pi == 3 {
				pt.DivergingEpoch.Epoch, pt.DivergingEpoch.EndOffset = 4, 50
				pt.CurrentLeader.LeaderID, pt.CurrentLeader.LeaderEpoch = 2, 6
				pt.SnapshotID.EndOffset, pt.SnapshotID.Epoch = 40, 3
				pt.UnknownTags.Set(99, []byte("tag"))
			}
			rt.Partitions = append(rt.Partitions, pt)
		}
		if v >= 12 {
			rt.UnknownTags.Set(7, []byte{0, 0, 0, 0})
		}
		many.Topics = append(many.Topics, rt)
	}
	if v >= 16 {
		many.Brokers = []kmsg.FetchResponseBroker{{NodeID: 2, Host: "b2", Port: 9092}, {NodeID: 0, Host: "b0", Port: 9093}}
	}
	if v >= 12 {
		many.UnknownTags.Set(42, []byte{0xff})
	}
	// One partition: the answer a Kafka leader gives when its replica selector picks a follower.
	one := kmsg.NewPtrFetchResponse()
	one.SetVersion(v)
	rt := kmsg.NewFetchResponseTopic()
	rt.Topic, rt.TopicID = "t", [16]byte{9}
	pt := kmsg.NewFetchResponseTopicPartition()
	pt.Partition, pt.HighWatermark, pt.PreferredReadReplica = 1, 5, 2
	rt.Partitions = append(rt.Partitions, pt)
	one.Topics = append(one.Topics, rt)
	none := kmsg.NewPtrFetchResponse() // no topics: an empty answer to a fetch session
	none.SetVersion(v)
	return []*kmsg.FetchResponse{many, one, none}
}
