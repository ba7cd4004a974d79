package kafka

import (
	"encoding/binary"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestShareFetchAcquired: a share fetch delivers only the records in its acquired ranges, which
// may come in any order; each gets a consume checkpoint tagged with the share group. Partition
// and acknowledgement errors are broker errors, and a topic id no Metadata named is a skip.
func TestShareFetchAcquired(t *testing.T) {
	now := time.Unix(1700000900, 0)
	rec, errs := &recorder{}, &errRecorder{}
	p, err := New(Config{Listen: "127.0.0.1:0", Bootstrap: []string{"127.0.0.1:1"}, Env: "test", Observer: rec, Errors: errs,
		Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	id := [16]byte{1, 2, 3}
	p.topics.put(id, "jobs")
	var records []byte
	for base := int64(0); base < 10; base += 5 { // offsets 0-4, then 5-9
		b := buildBatchHeader(t, 5, 16, nil, "", nil)
		binary.BigEndian.PutUint64(b, uint64(base))
		records = append(records, b...)
	}
	badCodec := buildBatchHeader(t, 1, 16, nil, "", nil)
	badCodec[22] |= 7 // attributes: codec 7, which no Kafka version defines
	resp := kmsg.NewPtrShareFetchResponse()
	resp.Topics = []kmsg.ShareFetchResponseTopic{
		{TopicID: id, Partitions: []kmsg.ShareFetchResponseTopicPartition{
			{Partition: 0, Records: records, AcknowledgeErrorCode: kerr.InvalidRecordState.Code,
				AcquiredRecords: []kmsg.ShareFetchResponseTopicPartitionAcquiredRecord{{FirstOffset: 7, LastOffset: 8, DeliveryCount: 1},
					{FirstOffset: -1, LastOffset: 4}, {FirstOffset: 6, LastOffset: 5}, // invalid: dropped, as kgo drops them
					{FirstOffset: 1, LastOffset: 2, DeliveryCount: 2}}},
			{Partition: 1, ErrorCode: kerr.NotLeaderForPartition.Code},
			{Partition: 2, Records: badCodec,
				AcquiredRecords: []kmsg.ShareFetchResponseTopicPartitionAcquiredRecord{{FirstOffset: 0, LastOffset: 0}}},
		}},
		{TopicID: [16]byte{9}, Partitions: []kmsg.ShareFetchResponseTopicPartition{
			{Partition: 0, Records: records, AcquiredRecords: []kmsg.ShareFetchResponseTopicPartitionAcquiredRecord{{FirstOffset: 0, LastOffset: 9, DeliveryCount: 1}}},
			{Partition: 1, ErrorCode: kerr.UnknownTopicID.Code},
		}},
	}
	p.observeShareFetch(observeJob{share: resp, shareGroup: "workers", client: &clientInfo{service: "svc"}})
	pts, _ := rec.snapshot()
	if len(pts) != 4 {
		t.Fatalf("%d consume checkpoints, want 4 (offsets 1, 2, 7 and 8)", len(pts))
	}
	want := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: "jobs", Group: "workers"}.Tags()
	for _, pt := range pts {
		if !slices.Equal(pt.EdgeTags, want) || pt.Service != "svc" {
			t.Errorf("checkpoint %v of %s, want %v of svc", pt.EdgeTags, pt.Service, want)
		}
	}
	for _, want := range []struct{ name, op, topic string }{
		{kerr.NotLeaderForPartition.Message, "ShareFetch", "jobs"},
		{kerr.InvalidRecordState.Message, "ShareAcknowledge", "jobs"},
		{kerr.UnknownTopicID.Message, "ShareFetch", ""}, // of a topic the proxy cannot name
		{"unknown_topic_id", "ShareFetch", ""},
	} {
		evs := errs.byName(want.name)
		if len(evs) != 1 || evs[0].Operation != want.op || evs[0].Edge.Topic != want.topic || evs[0].Edge.Group != "workers" {
			t.Errorf("%s events %+v, want one of %s on topic %q of group workers", want.name, evs, want.op, want.topic)
		}
	}
	if evs := errs.byCategory(errtrack.DecodeError); len(evs) != 1 || evs[0].Operation != "ShareFetch" {
		t.Errorf("decode error events %+v, want one of ShareFetch (partition 2's records)", evs)
	}
}

// TestShareAckErrors: a ShareAcknowledge response's errors are tracked with the share group and
// the topic; the response goes to the client unchanged.
func TestShareAckErrors(t *testing.T) {
	s := offlineSession(t)
	errs := &errRecorder{}
	s.p.errs = errs
	id := [16]byte{4}
	s.p.topics.put(id, "jobs")
	resp := kmsg.NewPtrShareAcknowledgeResponse()
	resp.SetVersion(resp.MaxVersion())
	resp.Topics = []kmsg.ShareAcknowledgeResponseTopic{{TopicID: id, Partitions: []kmsg.ShareAcknowledgeResponseTopicPartition{
		{Partition: 2, ErrorCode: kerr.InvalidRecordState.Code}, {Partition: 3},
	}}}
	frame := append(binary.BigEndian.AppendUint32(make([]byte, 4), 5), 0)
	frame = resp.AppendTo(frame)
	putSize(frame)
	pd := &pending{corr: 5, key: keyShareAck, version: resp.Version, flexible: true, facts: shareGroup("workers")}
	out, _, err := s.handleResponse(pd, slices.Clone(frame))
	if err != nil || !slices.Equal(out, frame) {
		t.Fatalf("response changed (%v)", err)
	}
	evs := errs.byName(kerr.InvalidRecordState.Message)
	if len(evs) != 1 || evs[0].Operation != "ShareAcknowledge" || evs[0].Partition != 2 || evs[0].Edge.Topic != "jobs" || evs[0].Edge.Group != "workers" {
		t.Fatalf("events %+v, want one ShareAcknowledge error on jobs/2 of workers", evs)
	}
}

// TestShareFetchQueueCost: a share fetch waiting for observation counts its decoded partitions
// and acquired ranges against ObserveQueueBytes, not only its frame's bytes, and the worker gives
// back the same amount.
func TestShareFetchQueueCost(t *testing.T) {
	s := offlineSession(t)
	p := s.p
	resp := kmsg.NewPtrShareFetchResponse()
	parts := make([]kmsg.ShareFetchResponseTopicPartition, 1000)
	for i := range parts {
		parts[i].Partition = int32(i)
		parts[i].AcquiredRecords = []kmsg.ShareFetchResponseTopicPartitionAcquiredRecord{{FirstOffset: 0, LastOffset: 0}}
	}
	resp.Topics = []kmsg.ShareFetchResponseTopic{{Partitions: parts}}
	frame := make([]byte, 64)
	if !p.enqueueObserve(observeJob{frame: frame, share: resp, client: s.info.Load()}) {
		t.Fatal("not queued")
	}
	if got, want := p.queued.Load(), int64(len(frame))+1000*(factBytes+32); got != want {
		t.Errorf("%d bytes queued, want %d", got, want)
	}
	close(p.observeQ)
	p.observeLoop()
	if got := p.queued.Load(); got != 0 {
		t.Errorf("%d bytes still counted once the worker was done, want 0", got)
	}
}
