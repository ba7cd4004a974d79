package kafka

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestGroupErrorEvents sends group requests a real coordinator refuses (a member it never saw, a
// generation it never had) and checks each refusal becomes a broker error event on the group's edge,
// with the cluster id as the topic edges of commit and fetch errors carry it, and the code the
// client received.
func TestGroupErrorEvents(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	cl := kgoClient(t, p, kgo.ClientID("grouper"))
	const group, ghost = "g-errors", "ghost-member"
	for _, tc := range []struct {
		op   string
		send func(context.Context) (int16, error) // the code the client received
	}{
		{"JoinGroup", func(ctx context.Context) (int16, error) {
			join := kmsg.NewPtrJoinGroupRequest()
			join.Group, join.MemberID, join.ProtocolType = group, ghost, "consumer"
			join.SessionTimeoutMillis, join.RebalanceTimeoutMillis = 10000, 10000
			jp := kmsg.NewJoinGroupRequestProtocol()
			jp.Name, jp.Metadata = "range", []byte{0, 0}
			join.Protocols = append(join.Protocols, jp)
			r, err := join.RequestWith(ctx, cl)
			if err != nil {
				return 0, err
			}
			return r.ErrorCode, nil
		}},
		{"SyncGroup", func(ctx context.Context) (int16, error) {
			sync := kmsg.NewPtrSyncGroupRequest()
			sync.Group, sync.Generation, sync.MemberID = group, 42, ghost
			sync.ProtocolType, sync.Protocol = kmsg.StringPtr("consumer"), kmsg.StringPtr("range")
			r, err := sync.RequestWith(ctx, cl)
			if err != nil {
				return 0, err
			}
			return r.ErrorCode, nil
		}},
		{"Heartbeat", func(ctx context.Context) (int16, error) {
			hb := kmsg.NewPtrHeartbeatRequest()
			hb.Group, hb.Generation, hb.MemberID = group, 42, ghost
			r, err := hb.RequestWith(ctx, cl)
			if err != nil {
				return 0, err
			}
			return r.ErrorCode, nil
		}},
		{"LeaveGroup", func(ctx context.Context) (int16, error) {
			leave := kmsg.NewPtrLeaveGroupRequest()
			leave.Group, leave.MemberID = group, ghost
			lm := kmsg.NewLeaveGroupRequestMember()
			lm.MemberID = ghost
			leave.Members = append(leave.Members, lm)
			r, err := leave.RequestWith(ctx, cl)
			if err != nil {
				return 0, err
			}
			if r.ErrorCode == 0 && len(r.Members) > 0 {
				return r.Members[0].ErrorCode, nil
			}
			return r.ErrorCode, nil
		}},
		{"ConsumerGroupHeartbeat", func(ctx context.Context) (int16, error) {
			hb := kmsg.NewPtrConsumerGroupHeartbeatRequest()
			hb.Group, hb.MemberID, hb.MemberEpoch = group+"-848", ghost, 7
			r, err := hb.RequestWith(ctx, cl)
			if err != nil {
				return 0, err
			}
			return r.ErrorCode, nil
		}},
	} {
		t.Run(tc.op, func(t *testing.T) {
			code, err := tc.send(testCtx(t))
			if err != nil {
				t.Fatalf("%s: %v", tc.op, err)
			}
			if code == 0 {
				t.Fatalf("%s was accepted; the test needs the coordinator to refuse it", tc.op)
			}
			edge := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Group: group, ClusterID: kfakeCluster}
			if tc.op == "ConsumerGroupHeartbeat" {
				edge.Group = group + "-848" // a group of the new protocol: the classic one's would refuse it
			}
			waitFor(t, tc.op+" error event on "+edge.String(), func() bool {
				for _, e := range p.errs.byCategory(errtrack.BrokerError) {
					if e.Operation == tc.op && int16(e.Code) == code && e.Edge == edge && e.Service == "grouper" && e.Name != "" {
						return true
					}
				}
				return false
			})
		})
	}
}

// TestListOffsetsErrorEvents asks a real broker for the offsets of a partition the topic does not
// have; the per-partition refusal becomes an event on the topic's consume edge.
func TestListOffsetsErrorEvents(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	cl := kgoClient(t, p, kgo.ClientID("lister"))
	topic := uniqueTopic(t, "lo")
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatalf("create topic: %v", err)
	}
	req := kmsg.NewPtrListOffsetsRequest()
	req.ReplicaID = -1
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = topic
	rp := kmsg.NewListOffsetsRequestTopicPartition()
	rp.Partition, rp.Timestamp = 7, -1 // partition 7 of a one-partition topic
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	// Sent to one broker explicitly: kgo would otherwise split by leader and refuse the unknown partition itself.
	resp, err := req.RequestWith(ctx, cl.Broker(int(c.LeaderFor(topic, 0))))
	if err != nil {
		t.Fatalf("list offsets: %v", err)
	}
	code := resp.Topics[0].Partitions[0].ErrorCode
	if code == 0 {
		t.Fatal("the broker accepted ListOffsets for a missing partition")
	}
	edge := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: topic, ClusterID: kfakeCluster}
	waitFor(t, "ListOffsets error event", func() bool {
		for _, e := range p.errs.byCategory(errtrack.BrokerError) {
			if e.Operation == "ListOffsets" && int16(e.Code) == code && e.Edge == edge && e.Partition == 7 && e.Service == "lister" {
				return true
			}
		}
		return false
	})
}

// TestThrottleEvents has the broker answer with a quota throttle (kfake's control hook sets
// throttle_time_ms on its answer) on a decoded response (ListOffsets) and on Fetch, which is
// observed after forwarding; both become THROTTLED events carrying the time.
func TestThrottleEvents(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	cl := kgoClient(t, p, kgo.ClientID("throttled"))
	for key, ms := range map[int16]int32{keyListOffsets: 250, keyFetch: 300} {
		c.ControlKey(key, func(req kmsg.Request) (kmsg.Response, error, bool) {
			resp := req.ResponseKind()
			resp.(interface{ SetThrottle(int32) }).SetThrottle(ms)
			return resp, nil, true
		})
	}
	lo := kmsg.NewPtrListOffsetsRequest()
	lo.ReplicaID = -1
	if _, err := lo.RequestWith(ctx, cl.Broker(0)); err != nil {
		t.Fatalf("list offsets: %v", err)
	}
	f := kmsg.NewPtrFetchRequest()
	f.ReplicaID, f.MaxWaitMillis, f.MaxBytes, f.SessionEpoch = -1, 10, 1<<20, -1
	if _, err := f.RequestWith(ctx, cl.Broker(0)); err != nil {
		t.Fatalf("fetch: %v", err)
	}
	want := map[string]time.Duration{"ListOffsets": 250 * time.Millisecond, "Fetch": 300 * time.Millisecond}
	waitFor(t, "throttle events", func() bool {
		seen := 0
		for _, e := range p.errs.byCategory(errtrack.BrokerError) {
			if d, ok := want[e.Operation]; ok && e.Name == "THROTTLED" && e.Throttle == d && e.Service == "throttled" && e.Retriable {
				seen++
			}
		}
		return seen == len(want)
	})
}

func TestErrorDescription(t *testing.T) {
	if d := errorDescription(10); !strings.Contains(d, "larger than the max message size") {
		t.Errorf("MESSAGE_TOO_LARGE description %q", d)
	}
	if d := errorDescription(9999); d != "" {
		t.Errorf("unknown code described as %q", d)
	}
}

// TestErrorNameRetriable: codes clients get past by themselves (idempotent producer sequences and
// epochs, rebalance steps) are retriable even where kerr says not, so they are never lost messages.
func TestErrorNameRetriable(t *testing.T) {
	for _, tc := range []struct {
		code      int16
		retriable bool
	}{
		{45, true}, {46, true}, {47, true}, {51, true}, {59, true}, // producer sequence, epoch, transactions
		{22, true}, {25, true}, {27, true}, {110, true}, {113, true}, // rebalance steps
		{6, true},   // NOT_LEADER_OR_FOLLOWER: kerr's own flag
		{10, false}, // MESSAGE_TOO_LARGE
		{29, false}, // TOPIC_AUTHORIZATION_FAILED
	} {
		name, retriable := errorName(tc.code)
		if retriable != tc.retriable {
			t.Errorf("%d (%s): retriable %v, want %v", tc.code, name, retriable, tc.retriable)
		}
	}
}

// TestGroupLookupAmbiguous: when consumers of two groups share a client key and hold the same
// partition, the fetch's group is unknown: lookup says "" every time, never one group at random;
// a partition only one of them holds still names it.
func TestGroupLookupAmbiguous(t *testing.T) {
	g := newGroupTracker(10)
	k := clientKey{}
	g.assign(k, "billing", []topicPartition{{"orders", 0}, {"orders", 1}})
	g.assign(k, "audit", []topicPartition{{"orders", 0}})
	for range 50 {
		if got := g.lookup(k, "orders", 0); got != "" {
			t.Fatalf("orders/0, held by both groups: %q", got)
		}
	}
	if got := g.lookup(k, "orders", 1); got != "billing" {
		t.Errorf("orders/1, held by billing only: %q", got)
	}
}

// TestGroupTrackerKeepsActiveClients: a full tracker forgets idle clients, one generation at a
// time, and never an active one's assignments; it holds at most its limit.
func TestGroupTrackerKeepsActiveClients(t *testing.T) {
	g := newGroupTracker(10)
	active := clientKey{clientID: "active"}
	idle := clientKey{clientID: "idle"}
	// Two groups, so lookup needs the assignments, not the only-group fallback.
	g.assign(active, "billing", []topicPartition{{"orders", 0}})
	g.assign(active, "audit", []topicPartition{{"orders", 1}})
	g.assign(idle, "billing", []topicPartition{{"orders", 2}})
	for i := range 100 {
		g.learn(clientKey{clientID: fmt.Sprintf("other-%d", i)}, "g")
		if got := g.lookup(active, "orders", 1); got != "audit" {
			t.Fatalf("after %d other clients, the active client's orders/1: %q, want audit", i+1, got)
		}
		if n := g.clients.Len(); n > 10 {
			t.Fatalf("after %d other clients the tracker holds %d, limit 10", i+1, n)
		}
	}
	if got := g.lookup(idle, "orders", 2); got != "" {
		t.Errorf("idle client still known after 100 others: %q", got)
	}
}

// TestCommitErrorOfUnknownTopicID commits (OffsetCommit v10) to a topic id no Metadata named,
// as a client holding a deleted topic's id does; the broker's per-partition refusal becomes an
// event on the group's edge (with the cluster id, as the group errors), although no topic name is
// known to report it under.
func TestCommitErrorOfUnknownTopicID(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	cl := kgoClient(t, p, kgo.ClientID("committer"))
	const group = "g-unknown-id"
	req := kmsg.NewPtrOffsetCommitRequest()
	req.Group, req.Generation = group, -1
	rt := kmsg.NewOffsetCommitRequestTopic()
	rt.TopicID = [16]byte{0xde, 0xad, 0xbe, 0xef, 15: 1}
	rp := kmsg.NewOffsetCommitRequestTopicPartition()
	rp.Partition, rp.Offset = 3, 42
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatalf("offset commit: %v", err)
	}
	if resp.Version < 10 {
		t.Fatalf("OffsetCommit v%d: the test needs v10, which names topics by id", resp.Version)
	}
	code := resp.Topics[0].Partitions[0].ErrorCode
	if code == 0 {
		t.Fatal("the broker accepted a commit to an unknown topic id")
	}
	edge := pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Group: group, ClusterID: kfakeCluster}
	waitFor(t, "OffsetCommit error event", func() bool {
		for _, e := range p.errs.byCategory(errtrack.BrokerError) {
			if e.Operation == "OffsetCommit" && int16(e.Code) == code && e.Edge == edge && e.Partition == 3 && e.Service == "committer" {
				return true
			}
		}
		return false
	})
}

// TestLongGroupCommitNoBacklog: a commit under a group id longer than the proxy learns (whose
// consumers' checkpoints carry no group) reaches the broker and its answer the client, but
// gives no kafka_commit backlog, only a long_group_name skip; a normal group's commit does.
func TestLongGroupCommitNoBacklog(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "long-group")
	cl := kgoClient(t, p, kgo.ClientID("committer"), kgo.AllowAutoTopicCreation())
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte("v")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("g", maxGroupNameBytes+1)
	id := topicID(t, ctx, cl, topic) // OffsetCommit v10 names topics by id
	for _, group := range []string{"short-group", long} {
		req := kmsg.NewPtrOffsetCommitRequest()
		req.Group, req.Generation = group, -1
		rt := kmsg.NewOffsetCommitRequestTopic()
		rt.Topic, rt.TopicID = topic, id
		rp := kmsg.NewOffsetCommitRequestTopicPartition()
		rp.Partition, rp.Offset = 0, 1
		rt.Partitions = append(rt.Partitions, rp)
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, cl)
		if err != nil || resp.Topics[0].Partitions[0].ErrorCode != 0 {
			t.Fatalf("commit for a group of %d bytes: %v, %+v", len(group), err, resp)
		}
	}
	waitFor(t, "the short group's backlog and the long one's skip", func() bool {
		_, offs := p.rec.snapshot()
		short := false
		for _, o := range offs {
			if o.Kind == pathway.KafkaCommit && o.Group == "short-group" {
				short = true
			}
		}
		return short && len(p.errs.byName("long_group_name")) == 1
	})
	_, offs := p.rec.snapshot()
	for _, o := range offs {
		if o.Kind == pathway.KafkaCommit && o.Group == long {
			t.Errorf("a kafka_commit backlog under the %d-byte group", len(long))
		}
	}
}

// TestTxnOffsetsPastTheCapCounted: a transaction's offsets past maxTxnOffsets are not held for
// its EndTxn, and each one left out is counted (Stats.TxnOffsetsDropped).
func TestTxnOffsetsPastTheCapCounted(t *testing.T) {
	var tc txnCommits
	for i := range maxTxnOffsets + 5 {
		tc.hold("txn", txnProducer{}, pathway.Offset{Kind: pathway.KafkaCommit, Partition: int32(i)})
	}
	held, _ := tc.pending.Get("txn")
	if len(held.offsets) != maxTxnOffsets || tc.dropped.Load() != 5 {
		t.Errorf("held %d, dropped %d; want %d and 5", len(held.offsets), tc.dropped.Load(), maxTxnOffsets)
	}
}
