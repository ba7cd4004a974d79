package kafka

import (
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Deletions the proxy passes on: what they deleted leaves the view of last known offsets
// (Config.OffsetsGone), which would otherwise show a deleted group's lag, or a deleted topic's
// old log end against the new topic's commits, for the week it keeps offsets.
const (
	keyDeleteTopics int16 = 20
	keyDeleteGroups int16 = 42
	keyOffsetDelete int16 = 47
)

// offsetDeleteGroup is the group of an OffsetDelete request; its answer does not name it.
type offsetDeleteGroup string

func (s *session) offsetDeleteRequest(h requestHeader, frame []byte, pd *pending) {
	if group, ok := s.firstString(h, frame); ok {
		pd.facts = offsetDeleteGroup(group)
	}
}

// deletionResponse reports what a DeleteTopics, DeleteGroups or OffsetDelete answer says is
// gone: deleted, or not there to delete (its offsets are no more the cluster's than a deleted one's).
func (s *session) deletionResponse(pd *pending, frame []byte) {
	switch pd.key {
	case keyDeleteTopics:
		resp := kmsg.NewPtrDeleteTopicsResponse()
		if _, ok := s.decodeResponse(pd, frame, resp); !ok {
			return
		}
		for _, t := range resp.Topics {
			if t.ErrorCode != 0 && t.ErrorCode != kerr.UnknownTopicOrPartition.Code && t.ErrorCode != kerr.UnknownTopicID.Code {
				continue
			}
			var name string
			if t.Topic != nil {
				name = *t.Topic
			}
			if name == "" { // v6 deletes by id, and may answer without the name
				name, _ = s.p.topics.get(t.TopicID)
			}
			if name != "" {
				s.p.offsetsGone(name, "", -1)
			}
		}
	case keyDeleteGroups:
		resp := kmsg.NewPtrDeleteGroupsResponse()
		if _, ok := s.decodeResponse(pd, frame, resp); !ok {
			return
		}
		for _, g := range resp.Groups {
			// An empty group id (old clients commit under one) would read as every group's.
			if g.Group != "" && (g.ErrorCode == 0 || g.ErrorCode == kerr.GroupIDNotFound.Code) {
				s.p.offsetsGone("", g.Group, -1)
			}
		}
	case keyOffsetDelete:
		group, ok := pd.facts.(offsetDeleteGroup)
		if !ok || group == "" { // "" would read as every kind of offset of the topic
			return
		}
		resp := kmsg.NewPtrOffsetDeleteResponse()
		if _, ok := s.decodeResponse(pd, frame, resp); !ok {
			return
		}
		if resp.ErrorCode != 0 && resp.ErrorCode != kerr.GroupIDNotFound.Code {
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if resp.ErrorCode != 0 || p.ErrorCode == 0 {
					s.p.offsetsGone(t.Topic, string(group), p.Partition)
				}
			}
		}
	}
}
