package kafka

import (
	"cmp"
	"slices"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// Share groups (KIP-932) consume with ShareFetch: the broker hands each consumer ranges of
// records it acquired, and a record may be delivered again (to the same or another consumer)
// when its lock runs out or the consumer releases it. Each delivery is a consume, as a tracer in
// the consumer would see it: a checkpoint per acquired record, tagged with the share group.
// Share groups have no committed offsets, so no kafka_commit backlog comes from them.

// shareGroup is a ShareFetch or ShareAcknowledge request's group id, kept for its response.
type shareGroup string

// shareFetchResponse rewrites the response's node endpoints like the other address-carrying
// responses and queues it to be observed once it is forwarded.
func (s *session) shareFetchResponse(pd *pending, frame []byte) ([]byte, func()) {
	resp := kmsg.NewPtrShareFetchResponse()
	start, ok := s.decodeResponse(pd, frame, resp)
	if !ok {
		return frame, nil
	}
	out := s.rewriteDecoded(pd, frame, start, resp)
	group, _ := pd.facts.(shareGroup)
	ci := s.info.Load()
	// resp refers to frame's bytes, which nothing reuses (only streamed Fetch frames are pooled).
	job := observeJob{frame: frame, version: pd.version, client: ci, share: resp, shareGroup: string(group), log: &s.log, at: s.p.now()}
	return out, func() { s.p.enqueueObserve(job) }
}

// observeShareFetch records a consume checkpoint per record the response delivers, and the
// partition errors, including those acknowledging earlier deliveries (a share consumer's
// acknowledgements ride on its next ShareFetch).
func (p *Proxy) observeShareFetch(job observeJob) {
	resp, ci, now := job.share, job.client, job.at
	if now.IsZero() {
		now = p.now()
	}
	base := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Group: job.shareGroup, ClusterID: p.cluster()}
	if resp.ErrorCode != 0 {
		p.brokerError(keyShareFetch, resp.ErrorCode, ci.service, base, -1, 0)
	}
	for ti := range resp.Topics {
		t := &resp.Topics[ti]
		edge := base
		name, known := p.topicName("", t.TopicID)
		edge.Topic = name // unknown: errors are still tracked, without the topic
		if !known && slices.ContainsFunc(t.Partitions, func(pt kmsg.ShareFetchResponseTopicPartition) bool { return len(pt.AcquiredRecords) > 0 }) {
			p.skipOp("ShareFetch", "unknown_topic_id", "share-fetched records of a topic id unknown (in no Metadata answer seen yet, or forgotten past max_topic_ids): no consume checkpoints for them",
				ci.service, base, -1, 0)
		}
		for pi := range t.Partitions {
			part := &t.Partitions[pi]
			if part.AcknowledgeErrorCode != 0 {
				p.brokerError(keyShareAck, part.AcknowledgeErrorCode, ci.service, edge, part.Partition, 0)
			}
			if part.ErrorCode != 0 {
				p.brokerError(keyShareFetch, part.ErrorCode, ci.service, edge, part.Partition, 0)
				continue
			}
			if !known || len(part.Records) == 0 {
				continue
			}
			if acquired := acquiredRanges(part.AcquiredRecords); len(acquired) > 0 {
				p.checkpointRecords(ci, edge, fetchedPartition{op: keyShareFetch, partition: part.Partition, records: part.Records, from: -1,
					acquired: acquired}, now)
			}
		}
	}
}

// acquiredRanges is the valid ranges of a response, sorted by first offset. A range starting
// below 0 or ending before it starts is dropped, as kgo's share consumer drops it.
func acquiredRanges(rs []kmsg.ShareFetchResponseTopicPartitionAcquiredRecord) []kmsg.ShareFetchResponseTopicPartitionAcquiredRecord {
	valid := func(r kmsg.ShareFetchResponseTopicPartitionAcquiredRecord) bool {
		return r.FirstOffset >= 0 && r.LastOffset >= r.FirstOffset
	}
	if slices.IsSortedFunc(rs, byFirstOffset) && !slices.ContainsFunc(rs, func(r kmsg.ShareFetchResponseTopicPartitionAcquiredRecord) bool { return !valid(r) }) {
		return rs
	}
	out := slices.DeleteFunc(slices.Clone(rs), func(r kmsg.ShareFetchResponseTopicPartitionAcquiredRecord) bool { return !valid(r) })
	slices.SortFunc(out, byFirstOffset)
	return out
}

// shareCost is about what a decoded ShareFetch response holds in memory beyond its frame's bytes:
// a kmsg partition struct (about 100 bytes) per partition, an acquired range (32) per range.
func shareCost(r *kmsg.ShareFetchResponse) int64 {
	var n int64
	for _, t := range r.Topics {
		n += factBytes * int64(len(t.Partitions))
		for _, p := range t.Partitions {
			n += 32 * int64(len(p.AcquiredRecords))
		}
	}
	return n
}

func byFirstOffset(a, b kmsg.ShareFetchResponseTopicPartitionAcquiredRecord) int {
	return cmp.Compare(a.FirstOffset, b.FirstOffset)
}

// shareAckResponse rewrites a ShareAcknowledge response's node endpoints and tracks its errors:
// acknowledgements a share consumer's client may retry or drop without the application knowing.
func (s *session) shareAckResponse(pd *pending, frame []byte) []byte {
	resp := kmsg.NewPtrShareAcknowledgeResponse()
	start, ok := s.decodeResponse(pd, frame, resp)
	if !ok {
		return frame
	}
	out := s.rewriteDecoded(pd, frame, start, resp)
	group, _ := pd.facts.(shareGroup)
	service := s.info.Load().service
	base := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Group: string(group), ClusterID: s.p.cluster()}
	if resp.ErrorCode != 0 {
		s.p.brokerError(keyShareAck, resp.ErrorCode, service, base, -1, 0)
	}
	for _, t := range resp.Topics {
		edge := base
		edge.Topic, _ = s.p.topicName("", t.TopicID) // unknown: the error is still tracked, without the topic
		for _, part := range t.Partitions {
			if part.ErrorCode != 0 {
				s.p.brokerError(keyShareAck, part.ErrorCode, service, edge, part.Partition, 0)
			}
		}
	}
	return out
}
