package kafka

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"
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
		kmsg.NewPtrHeartbeatRequest(), kmsg.NewPtrLeaveGroupRequest(), kmsg.NewPtrEndTxnRequest(), kmsg.NewPtrShareFetchRequest()} {
		for _, v := range []int16{0, req.MaxVersion()} {
			req.SetVersion(v)
			f.Add(requestFrame(req, 1))
		}
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 4 {
			return
		}
		// The fuzzer's input must stay as it was given, or a crasher is saved other than it ran.
		frame = append([]byte(nil), frame...)
		putSize(frame)
		s := offlineSession(t)
		h, err := parseRequestHeader(frame)
		if err != nil {
			return
		}
		if h.BodyStart > len(frame) {
			t.Fatalf("body start %d past frame %d", h.BodyStart, len(frame))
		}
		out, pd := s.handleRequest(h, frame)
		if len(out) < 12 || int(binary.BigEndian.Uint32(out))+4 != len(out) {
			t.Fatalf("forwarded frame with bad size prefix")
		}
		if pd != nil && pd.corr != h.CorrID {
			t.Fatalf("pending corr %d, header %d", pd.corr, h.CorrID)
		}
	})
}

// fuzzTopicID is a topic id FuzzResponse's proxy knows.
var fuzzTopicID = [16]byte{0xf}

func FuzzResponse(f *testing.F) {
	for _, key := range []int16{keyProduce, keyFetch, keyMetadata, keyOffsetCommit, keyFindCoordinator, keySyncGroup,
		keySaslHandshake, keyApiVersions, keyTxnOffsetCommit, keyDescribeCluster, keyCGHeartbeat, keyShareFetch, keyShareAck,
		keyListOffsets, keyJoinGroup, keyHeartbeat, keyLeaveGroup, keyEndTxn} {
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
		out, after, err := s.handleResponse(pd, frame)
		if err != nil {
			return
		}
		if len(out) < 8 || int(binary.BigEndian.Uint32(out))+4 != len(out) {
			t.Fatalf("forwarded response with bad size prefix")
		}
		if after != nil {
			after()
			close(s.p.observeQ)
			s.p.observeLoop()
		}
	})
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
