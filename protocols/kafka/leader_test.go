package kafka

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
)

// TestLeadershipMove moves a partition's leader between produces: the broker answers
// NOT_LEADER_OR_FOLLOWER (with KIP-951 node endpoints on new Produce versions), the client
// refreshes Metadata through the proxy and carries on, through the new leader's proxy listener.
func TestLeadershipMove(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "move")
	cl := kgoClient(t, p, kgo.ClientID("mover"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatalf("create topic: %v", err)
	}
	var sent []sentRecord
	base := time.UnixMilli(1700000200000)
	for round := 0; round < 3; round++ {
		recs := testRecords(5, base.Add(time.Duration(round)*time.Second))
		for i := range recs {
			recs[i].key = append([]byte(nil), []byte{byte('a' + round), byte('0' + i)}...)
		}
		produceKgo(t, ctx, cl, topic, recs)
		sent = append(sent, recs...)
		leader := c.LeaderFor(topic, 0)
		next := (leader + 1) % 3
		if err := c.MoveTopicPartition(topic, 0, next); err != nil {
			t.Fatalf("move: %v", err)
		}
		t.Logf("round %d: moved leader %d -> %d", round, leader, next)
	}
	got := consumeKgo(t, ctx, p, topic, "g-move", len(sent))
	checkRecords(t, sent, got, wantInjected)
	guard.check(t)
	notLeader := 0
	for _, e := range p.errs.byCategory(errtrack.BrokerError) {
		if e.Code == 6 && e.Operation == "Produce" && e.Retriable {
			notLeader++
		}
	}
	if notLeader == 0 {
		t.Errorf("no NOT_LEADER_OR_FOLLOWER produce error was reported; did the move happen? events: %+v", p.errs.byCategory(errtrack.BrokerError))
	}
	if _, ok := p.NodeAddr(c.LeaderFor(topic, 0)); !ok {
		t.Errorf("no proxy listener for the final leader")
	}
}

// TestNotLeaderEndpointsOnFetches asks a partition's former leader for it, with the newest Fetch
// and ShareFetch, after a move. The broker answers NOT_LEADER_OR_FOLLOWER with the KIP-951 node
// endpoints of every broker; each one must reach the client as the proxy listener of that node,
// never as the broker's own address.
func TestNotLeaderEndpointsOnFetches(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "endpoints")
	cl := kgoClient(t, p, kgo.ClientID("hinted"))
	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		t.Fatalf("create topic: %v", err)
	}
	produceKgo(t, ctx, cl, topic, testRecords(2, time.UnixMilli(1700000250000)))
	details, err := adm.ListTopics(ctx, topic)
	if err != nil || details[topic].Err != nil {
		t.Fatalf("metadata: %v %v", err, details[topic].Err)
	}
	id := details[topic].ID
	old := c.LeaderFor(topic, 0)
	if err := c.MoveTopicPartition(topic, 0, (old+1)%3); err != nil {
		t.Fatalf("move: %v", err)
	}
	checkEndpoints := func(api string, version int16, code int16, nodes map[int32]string) {
		t.Helper()
		if code != kerr.NotLeaderForPartition.Code {
			t.Fatalf("%s v%d from the former leader: error %d, want NOT_LEADER_OR_FOLLOWER", api, version, code)
		}
		if len(nodes) != 3 {
			t.Fatalf("%s v%d: %d node endpoints, want the 3 brokers: %v", api, version, len(nodes), nodes)
		}
		for node, addr := range nodes {
			want, ok := p.NodeAddr(node)
			if !ok || addr != want.String() {
				t.Errorf("%s v%d: node %d at %s, want its proxy listener %v", api, version, node, addr, want)
			}
		}
	}
	formerLeader := cl.Broker(int(old))

	fetch := kmsg.NewPtrFetchRequest()
	fetch.ReplicaID, fetch.MaxWaitMillis, fetch.MaxBytes = -1, 10, 1<<20
	ft := kmsg.NewFetchRequestTopic()
	ft.Topic, ft.TopicID = topic, id
	fp := kmsg.NewFetchRequestTopicPartition()
	fp.Partition, fp.PartitionMaxBytes, fp.CurrentLeaderEpoch, fp.LogStartOffset = 0, 1<<20, -1, -1
	ft.Partitions = append(ft.Partitions, fp)
	fetch.Topics = append(fetch.Topics, ft)
	fr, err := fetch.RequestWith(ctx, formerLeader)
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if fr.Version < 16 {
		t.Fatalf("Fetch v%d: the test needs v16+, which carries node endpoints", fr.Version)
	}
	if len(fr.Topics) != 1 || len(fr.Topics[0].Partitions) != 1 {
		t.Fatalf("fetch answer: %+v", fr.Topics)
	}
	nodes := map[int32]string{}
	for _, b := range fr.Brokers {
		nodes[b.NodeID] = net.JoinHostPort(b.Host, strconv.Itoa(int(b.Port)))
	}
	checkEndpoints("Fetch", fr.Version, fr.Topics[0].Partitions[0].ErrorCode, nodes)

	share := kmsg.NewPtrShareFetchRequest()
	group, member := "share-endpoints", "bWVtYmVyLWVuZHBvaW50czA"
	share.GroupID, share.MemberID, share.ShareSessionEpoch = &group, &member, 0
	share.MaxWaitMillis, share.MinBytes, share.MaxBytes, share.MaxRecords, share.BatchSize = 10, 1, 1<<20, 100, 100
	st := kmsg.NewShareFetchRequestTopic()
	st.TopicID = id
	sp := kmsg.NewShareFetchRequestTopicPartition()
	sp.Partition = 0
	st.Partitions = append(st.Partitions, sp)
	share.Topics = append(share.Topics, st)
	sr, err := share.RequestWith(ctx, formerLeader)
	if err != nil {
		t.Fatalf("share fetch: %v", err)
	}
	if sr.ErrorCode != 0 || len(sr.Topics) != 1 || len(sr.Topics[0].Partitions) != 1 {
		t.Fatalf("share fetch answer: error %d, %+v", sr.ErrorCode, sr.Topics)
	}
	nodes = map[int32]string{}
	for _, b := range sr.NodeEndpoints {
		nodes[b.NodeID] = net.JoinHostPort(b.Host, strconv.Itoa(int(b.Port)))
	}
	checkEndpoints("ShareFetch", sr.Version, sr.Topics[0].Partitions[0].ErrorCode, nodes)
	guard.check(t)
}
