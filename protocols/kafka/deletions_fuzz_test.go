package kafka

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// deletionAnswer is one DeleteTopics, DeleteGroups or OffsetDelete answer body.
type deletionAnswer struct {
	key, version int16
	body         []byte
}

// kfakeDeletionAnswers are a kfake broker's answers to kgo's deletions: of a topic by name and by
// id (DeleteTopics v6), of one not there, of a group, of a group not there, of a group with a
// member (NON_EMPTY_GROUP), of a group's offsets of a partition, and of a group's offsets of a
// topic not there.
func kfakeDeletionAnswers(t testing.TB) []deletionAnswer {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(2))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	defer c.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	adm := kadm.NewClient(cl)
	for _, topic := range []string{"gone", "gone-by-id"} {
		if _, err := adm.CreateTopic(ctx, 2, 1, nil, topic); err != nil {
			t.Fatal(err)
		}
	}
	var os kadm.Offsets
	os.AddOffset("gone", 0, 5, -1)
	os.AddOffset("gone", 1, 7, -1)
	for _, g := range []string{"g", "g2"} {
		if r, err := adm.CommitOffsets(ctx, g, os); err != nil || r.Error() != nil {
			t.Fatalf("commit: %v %v", err, r.Error())
		}
	}
	member, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumerGroup("busy"), kgo.ConsumeTopics("gone"))
	if err != nil {
		t.Fatal(err)
	}
	defer member.Close()
	for {
		gs, err := adm.DescribeGroups(ctx, "busy")
		if err == nil && len(gs["busy"].Members) == 1 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the member of group busy did not join")
		}
		time.Sleep(50 * time.Millisecond)
	}
	td, err := adm.ListTopics(ctx, "gone-by-id")
	if err != nil {
		t.Fatal(err)
	}

	var out []deletionAnswer
	ask := func(req kmsg.Request) {
		resp, err := cl.Request(ctx, req)
		if err != nil {
			t.Fatalf("%s: %v", kmsg.NameForKey(req.Key()), err)
		}
		out = append(out, deletionAnswer{req.Key(), resp.GetVersion(), resp.AppendTo(nil)})
	}
	od := kmsg.NewPtrOffsetDeleteRequest()
	od.Group = "g"
	od.Topics = []kmsg.OffsetDeleteRequestTopic{{Topic: "gone", Partitions: []kmsg.OffsetDeleteRequestTopicPartition{{Partition: 0}}}, {Topic: "nope", Partitions: []kmsg.OffsetDeleteRequestTopicPartition{{Partition: 0}}}}
	ask(od)
	od2 := kmsg.NewPtrOffsetDeleteRequest()
	od2.Group = "not-a-group"
	od2.Topics = od.Topics
	ask(od2)
	dg := kmsg.NewPtrDeleteGroupsRequest()
	dg.Groups = []string{"g2", "not-a-group", "busy"}
	ask(dg)
	dt := kmsg.NewPtrDeleteTopicsRequest()
	dt.TopicNames = []string{"gone", "nope"}
	dt.Topics = []kmsg.DeleteTopicsRequestTopic{{Topic: kmsg.StringPtr("gone")}, {Topic: kmsg.StringPtr("nope")}}
	ask(dt)
	byID := kmsg.NewPtrDeleteTopicsRequest()
	byID.Topics = []kmsg.DeleteTopicsRequestTopic{{TopicID: td["gone-by-id"].ID}, {TopicID: [16]byte{0xde, 0xad}}}
	ask(byID)
	return out
}

// deletionFrame is an answer frame: size, correlation id, header tags where flexible, body.
func deletionFrame(key, version int16, body []byte) []byte {
	frame := binary.BigEndian.AppendUint32(make([]byte, 4), 1)
	if isFlexible(key, version) {
		frame = append(frame, 0)
	}
	frame = append(frame, body...)
	putSize(frame)
	return frame
}

// FuzzDeletionResponse: a DeleteTopics, DeleteGroups or OffsetDelete answer (deletions.go) is
// relayed as the broker sent it, whatever its bytes, and what the proxy tells gone is what the
// answer says was deleted or was not there to delete: a topic by name (or by an id a Metadata
// answer named) for every group and partition, a group (never "", which would read as every
// group) for every topic, the OffsetDelete request's group's offsets of a partition the answer
// names, and nothing for an entry with another error code.
func FuzzDeletionResponse(f *testing.F) {
	for _, a := range kfakeDeletionAnswers(f) {
		f.Add(a.key, a.version, "g", a.body)
	}
	unknown := kerr.UnknownTopicOrPartition.Code
	for v := int16(0); v <= kmsg.NewPtrDeleteTopicsResponse().MaxVersion(); v++ {
		r := kmsg.NewPtrDeleteTopicsResponse()
		r.SetVersion(v)
		r.Topics = []kmsg.DeleteTopicsResponseTopic{{Topic: kmsg.StringPtr("t")}, {Topic: kmsg.StringPtr("u"), ErrorCode: unknown},
			{TopicID: fuzzTopicID}, {Topic: kmsg.StringPtr("v"), ErrorCode: kerr.TopicAuthorizationFailed.Code}}
		f.Add(keyDeleteTopics, v, "", r.AppendTo(nil))
	}
	for v := int16(0); v <= kmsg.NewPtrDeleteGroupsResponse().MaxVersion(); v++ {
		r := kmsg.NewPtrDeleteGroupsResponse()
		r.SetVersion(v)
		r.Groups = []kmsg.DeleteGroupsResponseGroup{{Group: "g"}, {Group: ""}, {Group: "h", ErrorCode: kerr.GroupIDNotFound.Code},
			{Group: "i", ErrorCode: kerr.NonEmptyGroup.Code}}
		f.Add(keyDeleteGroups, v, "", r.AppendTo(nil))
	}
	od := kmsg.NewPtrOffsetDeleteResponse()
	od.Topics = []kmsg.OffsetDeleteResponseTopic{{Topic: "t", Partitions: []kmsg.OffsetDeleteResponseTopicPartition{{Partition: 1}, {Partition: 2, ErrorCode: kerr.GroupSubscribedToTopic.Code}}}}
	f.Add(keyOffsetDelete, int16(0), "g", od.AppendTo(nil))
	f.Add(keyOffsetDelete, int16(0), "", od.AppendTo(nil))
	f.Fuzz(func(t *testing.T, key, version int16, group string, body []byte) {
		if key != keyDeleteTopics && key != keyDeleteGroups && key != keyOffsetDelete || !knownVersion(key, version) {
			return
		}
		var told []pathway.OffsetsGone
		s := offlineSession(t)
		s.p.cfg.OffsetsGone = func(g pathway.OffsetsGone) { told = append(told, g) }
		cluster := "fuzz-cluster"
		s.p.clusterID.Store(&cluster)
		s.p.topics.put(fuzzTopicID, "fuzz")
		frame := deletionFrame(key, version, body)
		orig := bytes.Clone(frame)
		pd := &pending{corr: 1, key: key, version: version, flexible: isFlexible(key, version)}
		if key == keyOffsetDelete {
			pd.facts = offsetDeleteGroup(group)
		}
		out, after, err := s.handleResponse(pd, frame)
		if err != nil || after != nil || !bytes.Equal(out, orig) || !bytes.Equal(frame, orig) {
			t.Fatalf("%s v%d: the answer was not relayed as it came (%v, after %v)", kmsg.NameForKey(key), version, err, after != nil)
		}
		var want []pathway.OffsetsGone
		gone := func(topic, group string, partition int32) {
			if len(topic) > maxGroupNameBytes || len(group) > maxGroupNameBytes {
				return // no offsets of such names are kept: nothing to forget
			}
			want = append(want, pathway.OffsetsGone{ClusterID: cluster, Topic: topic, Group: group, Partition: partition})
		}
		resp := kmsg.ResponseForKey(key)
		resp.SetVersion(version)
		if resp.ReadFrom(body) == nil {
			switch r := resp.(type) {
			case *kmsg.DeleteTopicsResponse:
				for _, tp := range r.Topics {
					if tp.ErrorCode != 0 && tp.ErrorCode != unknown && tp.ErrorCode != kerr.UnknownTopicID.Code {
						continue
					}
					switch {
					case tp.Topic != nil && *tp.Topic != "":
						gone(*tp.Topic, "", -1)
					case tp.TopicID == fuzzTopicID:
						gone("fuzz", "", -1)
					}
				}
			case *kmsg.DeleteGroupsResponse:
				for _, g := range r.Groups {
					if g.Group != "" && (g.ErrorCode == 0 || g.ErrorCode == kerr.GroupIDNotFound.Code) {
						gone("", g.Group, -1)
					}
				}
			case *kmsg.OffsetDeleteResponse:
				if group == "" || r.ErrorCode != 0 && r.ErrorCode != kerr.GroupIDNotFound.Code {
					break
				}
				for _, tp := range r.Topics {
					for _, p := range tp.Partitions {
						if r.ErrorCode != 0 || p.ErrorCode == 0 {
							gone(tp.Topic, group, p.Partition)
						}
					}
				}
			}
		}
		for i := range told {
			if told[i].Time == 0 {
				t.Fatalf("%s v%d: told gone without a time: %+v", kmsg.NameForKey(key), version, told[i])
			}
			told[i].Time = 0
			if told[i].Group == "" && told[i].Topic == "" {
				t.Fatalf("%s v%d: told every offset of the cluster gone: %+v", kmsg.NameForKey(key), version, told[i])
			}
		}
		if len(told) != len(want) {
			t.Fatalf("%s v%d: told gone\n%+v\nthe answer says\n%+v", kmsg.NameForKey(key), version, told, want)
		}
		for i := range want {
			if told[i] != want[i] {
				t.Fatalf("%s v%d: told gone\n%+v\nthe answer says\n%+v", kmsg.NameForKey(key), version, told, want)
			}
		}
	})
}
