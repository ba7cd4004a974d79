package kafka

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// produceFacts is what a produce response needs from its request.
type produceFacts struct {
	service string
	parts   []producedPart
}

type producedPart struct {
	topic     string // "" when a topic id did not resolve
	topicID   [16]byte
	partition int32
	records   int // records in the partition's batches (from the batch headers)
	grownTo   int // the partition's records as rewritten, when the proxy added headers
	size      int // and as the client sent them
	// points are the produce checkpoints of the records, held until the broker stores them:
	// a batch refused, or sent again by a client that timed out, is not counted (again).
	points *[]pathway.Point
	// unpointed records got the header past maxBatchPoints: checkpoints counted as dropped.
	unpointed int
	// An idempotent producer's batch: its producer id and sequence (see producedSequences).
	producerID int64
	seq        batchSequence
	idempotent bool
}

// batchRecordCount sums the record counts of the magic-2 batches in records (a partition's
// Records field); legacy message sets count 0 (the proxy does not track their offsets).
func batchRecordCount(records []byte) int {
	n := 0
	for len(records) >= 61 {
		length := int(int32(binary.BigEndian.Uint32(records[8:])))
		if length < 49 || len(records) < 12+length || records[16] != 2 {
			break
		}
		n += int(int32(binary.BigEndian.Uint32(records[57:])))
		records = records[12+length:]
	}
	return n
}

// askTopics asks for the size limits of a produce request's topics (once per run of a topic's
// partitions, as a request lists them) before its first batch may wait for one: one lookup then
// answers them all, where asking as each batch comes would cost a round trip per new topic.
// Topic ids not (yet) known are left to the loop, which counts them.
func (s *session) askTopics(parts []producePartition) {
	if s.p.limits.noReader.Load() {
		return
	}
	var last string
	for i := range parts {
		p := &parts[i]
		name := p.topic
		if name == "" {
			name, _ = s.p.topics.get(p.topicID)
		}
		if name == "" || name == last || len(name) > maxTopicNameBytes || p.null {
			continue
		}
		last = name
		s.p.limits.askFor(name)
	}
}

// maxTopicNameBytes is Kafka's limit on topic names (249 characters, all ASCII).
const maxTopicNameBytes = 249

// produceRequest injects the pathway context into every batch it can and remembers per partition
// how many records went out, for the response's offsets and errors. It returns a nil pending for
// acks=0, which gets no response.
func (s *session) produceRequest(h requestHeader, frame []byte, pd *pending) ([]byte, *pending) {
	v := &s.produce
	defer s.trimProduceBuffers()
	if err := parseProduce(h, frame, v); err != nil {
		s.p.decodeError("Produce request", h.Key, h.Version, err)
		if v.acked && v.acks == 0 {
			return frame, nil // forwarded as it is; no answer will come to wait for
		}
		return frame, pd
	}
	if v.acks == 0 {
		pd = nil
	}
	s.limitWait = time.Now().Add(time.Duration(s.p.limits.wait.Load())) // for all of the request's first lookups together
	ci := s.info.Load()
	if len(v.parts) > maxProducePartitions {
		// Its facts, held until the answer, would grow with the partition count (a 100 MiB
		// request of tiny partitions: gigabytes). No client sends so many; it goes as it came.
		n := 0
		for i := range v.parts {
			n += batchRecordCount(frame[v.parts[i].recStart:v.parts[i].recEnd])
		}
		s.p.stats.skipped.Add(1)
		s.p.skip("too_many_partitions", fmt.Sprintf("produce request naming %d partitions, over %d: forwarded unmodified, no checkpoints", len(v.parts), maxProducePartitions),
			ci.service, pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, ClusterID: s.p.cluster()}, -1, n)
		return frame, pd
	}
	facts := &produceFacts{service: ci.service, parts: make([]producedPart, 0, len(v.parts))}
	spans := s.spans[:0]
	s.scratch = s.bigBuf(&s.scratch, len(frame)+len(frame)/16) // the spliced batches: about the frame, grown
	changed := false
	// acks=0: no answer will say whether the broker stored them. Unkept facts: no answer will
	// be read for it.
	hold := pd != nil && s.keepFacts(pd, len(v.parts))
	s.askTopics(v.parts)
	for i := range v.parts {
		p := &v.parts[i]
		records := frame[p.recStart:p.recEnd]
		n := batchRecordCount(records)
		name, ok := s.p.topicName(p.topic, p.topicID)
		facts.parts = append(facts.parts, producedPart{topic: name, topicID: p.topicID, partition: p.partition, records: n})
		span := [2]int{-1, -1}
		switch {
		case p.null || len(records) == 0:
		case !ok:
			s.p.stats.skipped.Add(1)
			s.p.skip("unknown_topic_id", "topic id unknown: in no Metadata answer seen yet, or forgotten past max_topic_ids", ci.service, pathway.Edge{}, p.partition, n)
		case len(name) > maxTopicNameBytes:
			// No such topic can exist and the broker refuses it; checkpointing it would let a
			// client fill the checkpoint caches with names of up to 32 KiB.
			s.p.stats.skipped.Add(1)
			s.p.skip("invalid_topic", fmt.Sprintf("topic name of %d bytes, over Kafka's %d", len(name), maxTopicNameBytes), ci.service, pathway.Edge{}, p.partition, n)
		default:
			if start, end, held, over, ok := s.injectPartition(ci, name, p.partition, records, hold); ok {
				span = [2]int{start, end}
				changed = true
				part := &facts.parts[len(facts.parts)-1]
				part.grownTo, part.size, part.points, part.unpointed = end-start, len(records), held, over
				part.producerID, part.seq, part.idempotent = idempotentBatch(records)
			}
		}
		spans = append(spans, span)
	}
	s.spans = spans
	if hold {
		pd.facts = facts
	}
	if !changed {
		return frame, pd
	}
	// The spliced batches sit in s.scratch; resolve them only now (appending may have moved it).
	repl := s.repl[:0]
	grow := 0
	for i, sp := range spans {
		if sp[0] < 0 {
			repl = append(repl, nil)
			continue
		}
		repl = append(repl, s.scratch[sp[0]:sp[1]])
		grow += sp[1] - sp[0] - (v.parts[i].recEnd - v.parts[i].recStart) + 4
	}
	// The rewritten frame is written upstream before the next request is read, so buffers are
	// reused: no 100 KB allocation (and page faults) per request (bufList). One over
	// maxListedBuf is not kept.
	need := len(frame) + grow
	out := spliceRecords(s.bigBuf(&s.outBuf, need), frame, h.Version >= 9, v.parts, repl)
	s.outBuf = out[:0] // listed or dropped by shedBuffers, as its size says
	clear(repl)
	s.repl = repl[:0]
	return out, pd
}

// maxProducePartitions bounds the partitions of a produce request the proxy reads: a request
// naming more goes upstream unmodified (a too_many_partitions skip).
var maxProducePartitions = 1 << 16

// maxReusedParts bounds the per-partition buffers a connection keeps between produce requests.
// A request may name partitions of a few bytes each, and a 100 MiB one of them parses into
// about a gigabyte of entries: that is paid once, not kept for the connection's life.
const maxReusedParts = 4096

// trimProduceBuffers drops the buffers a huge produce request grew, so the connection does not
// keep them.
func (s *session) trimProduceBuffers() {
	if cap(s.produce.parts) > maxReusedParts {
		s.produce.parts = nil
	}
	if cap(s.spans) > maxReusedParts {
		s.spans = nil
	}
	if cap(s.repl) > maxReusedParts {
		s.repl = nil
	}
}

// produceResponse rewrites KIP-951 node endpoints and turns partitions into produce offsets or
// error events.
func (s *session) produceResponse(pd *pending, frame []byte) []byte {
	resp := kmsg.NewPtrProduceResponse()
	facts, _ := pd.facts.(*produceFacts)
	start, ok := s.decodeResponse(pd, frame, resp)
	if !ok {
		if facts != nil { // what the broker did is unknown: counted as sent
			for i := range facts.parts {
				s.releasePoints(&facts.parts[i], true)
			}
		}
		return frame
	}
	out := frame
	if len(resp.Brokers) > 0 && s.rewriteNodes(pd, resp) {
		out = encodeResponse(frame, start, resp)
	}
	if facts == nil {
		return out
	}
	now := s.p.now()
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			part := facts.find(t.Topic, t.TopicID, p.Partition)
			if part == nil || part.topic == "" {
				continue
			}
			edge := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: part.topic, ClusterID: s.p.cluster()}
			if p.ErrorCode == kerr.MessageTooLarge.Code && part.grownTo > 0 {
				// Perhaps refused only for what the proxy added (the proxy cannot tell whether the
				// batch as sent would have fitted): later batches of the topic stop short of this
				// size (topicLimits). This one the client sees refused.
				s.p.limits.refused(part.topic, part.grownTo)
				s.p.errs.Report(errtrack.Event{Time: now, Category: errtrack.ProxySkip, Protocol: "kafka",
					Operation: "Produce", Code: int32(p.ErrorCode), Name: "topic_size_limit", Service: facts.service,
					Edge: edge, Partition: p.Partition, Messages: part.records,
					Message: fmt.Sprintf("the broker refused a batch the header had grown from %d to %d bytes; if the topic's max.message.bytes lies between, the header caused it: later batches of the topic this large go without it", part.size, part.grownTo)})
			}
			stored := p.ErrorCode == 0
			if stored && part.idempotent && part.points != nil &&
				s.p.sequences.stored(sequenceKey{part.producerID, part.topic, p.Partition}, part.seq, p.BaseOffset) {
				// The broker had stored this batch already: a resend, counted when it was first stored.
				s.p.stats.resent.Add(1)
				stored = false
			}
			s.releasePoints(part, stored)
			if p.ErrorCode != 0 {
				s.p.brokerError(keyProduce, p.ErrorCode, facts.service, edge, p.Partition, part.records)
				if name, retriable := errorName(p.ErrorCode); !retriable {
					s.p.errs.Report(errtrack.Event{Time: now, Category: errtrack.LostMessage, Protocol: "kafka",
						Operation: "Produce", Code: int32(p.ErrorCode), Name: name, Service: facts.service, Edge: edge,
						Partition: p.Partition, Messages: part.records,
						Message: "the broker refused the batch with a non-retriable error"})
				}
				continue
			}
			if part.records > 0 && p.BaseOffset >= 0 {
				s.p.addOffset(pathway.Offset{Kind: pathway.KafkaProduce, Service: facts.service, Topic: part.topic, ClusterID: s.p.cluster(),
					Partition: p.Partition, Value: p.BaseOffset + int64(part.records) - 1, Time: now.UnixNano()})
			}
		}
	}
	return out
}

// releasePoints hands a partition's held checkpoints to the observer when stored, and returns
// their buffer.
func (s *session) releasePoints(part *producedPart, stored bool) {
	if part.points == nil {
		return
	}
	if stored {
		s.p.addPoints(*part.points)
		s.p.dropPoints(part.unpointed)
	}
	part.unpointed = 0
	s.p.heldPoints.Give(&s.heldPoints, int64(len(*part.points)))
	*part.points = (*part.points)[:0]
	s.p.pointBufs.Put(part.points)
	part.points = nil
}

func (f *produceFacts) find(topic string, id [16]byte, partition int32) *producedPart {
	for i := range f.parts {
		p := &f.parts[i]
		if p.partition != partition {
			continue
		}
		if topic != "" && p.topic == topic || topic == "" && p.topicID == id {
			return p
		}
	}
	return nil
}
