package kafka

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestNodeWithoutListenerLeftOut: broker node 0's listener cannot open (another process holds its
// address). Every Metadata answer names node 0, and closing the client's connection on each made
// the whole cluster unusable through the proxy, where direct only nothing was wrong. The node is
// left out of the answers instead, as a broker that is down: the partitions it leads have no
// leader, a group it coordinates no coordinator, and everything else works.
func TestNodeWithoutListenerLeftOut(t *testing.T) {
	topic := uniqueTopic(t, "node-left-out")
	c, guard, p := startNodeLeftOut(t, topic)
	var group string // one node 0 coordinates
	for i := 0; group == "" || c.CoordinatorFor(group) != 0; i++ {
		group = fmt.Sprintf("%s-g%d", topic, i)
	}

	conn := rawClient(t, p)
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	md := kmsg.NewPtrMetadataRequest()
	md.Version = 12
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = kmsg.StringPtr(topic)
	md.Topics = append(md.Topics, mt)
	if _, err := conn.Write(requestFrame(md, 1)); err != nil {
		t.Fatal(err)
	}
	mr := kmsg.NewPtrMetadataResponse()
	mr.SetVersion(md.Version)
	readResponse(t, conn, mr)
	for _, b := range mr.Brokers {
		if b.NodeID == 0 {
			t.Errorf("the answer names node 0 at %s:%d, which has no listener", b.Host, b.Port)
		}
	}
	if len(mr.Brokers) != 2 || len(mr.Topics) != 1 {
		t.Fatalf("answer: %d brokers, %d topics, want 2 and 1", len(mr.Brokers), len(mr.Topics))
	}
	for _, pt := range mr.Topics[0].Partitions {
		want, wantCode := pt.Partition, int16(0) // partition i is led by node i
		if want == 0 {
			want, wantCode = -1, kerr.LeaderNotAvailable.Code
		}
		if pt.Leader != want || pt.ErrorCode != wantCode {
			t.Errorf("partition %d: leader %d, error %d; want %d, %d", pt.Partition, pt.Leader, pt.ErrorCode, want, wantCode)
		}
		// As for a broker that is down: still a replica, no longer in sync, listed offline.
		if slices.Contains(pt.Replicas, 0) && (slices.Contains(pt.ISR, 0) || !slices.Contains(pt.OfflineReplicas, 0)) {
			t.Errorf("partition %d: replicas %v, isr %v, offline %v; want node 0 out of the isr and offline", pt.Partition, pt.Replicas, pt.ISR, pt.OfflineReplicas)
		}
	}
	if !slices.ContainsFunc(mr.Topics[0].Partitions, func(pt kmsg.MetadataResponseTopicPartition) bool { return slices.Contains(pt.Replicas, 0) }) {
		t.Error("no partition names node 0 as a replica: the check above tested nothing")
	}
	for _, v := range []int16{3, 4} { // one coordinator, and KIP-699's list
		fc := kmsg.NewPtrFindCoordinatorRequest()
		fc.Version = v
		fc.CoordinatorKey, fc.CoordinatorKeys = group, []string{group}
		if _, err := conn.Write(requestFrame(fc, int32(v))); err != nil {
			t.Fatal(err)
		}
		fr := kmsg.NewPtrFindCoordinatorResponse()
		fr.SetVersion(v)
		readResponse(t, conn, fr)
		code, node := fr.ErrorCode, fr.NodeID
		if v >= 4 && len(fr.Coordinators) == 1 {
			code, node = fr.Coordinators[0].ErrorCode, fr.Coordinators[0].NodeID
		}
		if code != kerr.CoordinatorNotAvailable.Code || node != -1 {
			t.Errorf("FindCoordinator v%d for a group of node 0: error %d, node %d; want COORDINATOR_NOT_AVAILABLE, -1", v, code, node)
		}
	}

	// A client uses the partitions of the other nodes as it would direct.
	ctx := testCtx(t)
	cl := kgoClient(t, p, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	for _, part := range []int32{1, 2} {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: part, Value: []byte("v")}).FirstErr(); err != nil {
			t.Fatalf("produce to partition %d (node %d): %v", part, part, err)
		}
	}
	cons := kgoClient(t, p, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{
		topic: {1: kgo.NewOffset().AtStart(), 2: kgo.NewOffset().AtStart()},
	}))
	for n := 0; n < 2; {
		fs := cons.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %d of 2: %v", n, err)
		}
		n += len(fs.Records())
	}
	guard.check(t)
}

// TestNodeLeftOutGroupClients: with node 0 left out (its listener cannot open), kcat consumes in
// a group coordinated by another node, reading the partitions of the other nodes and committing,
// as it would direct with node 0 down; its checkpoints carry the group. (A sarama consumer group
// fails Consume with LEADER_NOT_AVAILABLE for node 0's partition, as it does direct with a
// leaderless partition.)
func TestNodeLeftOutGroupClients(t *testing.T) {
	topic := uniqueTopic(t, "node-left-out-clients")
	c, guard, p := startNodeLeftOut(t, topic)
	groupOn := func(prefix string) string {
		for i := 0; ; i++ {
			if g := fmt.Sprintf("%s-%s-g%d", topic, prefix, i); c.CoordinatorFor(g) != 0 {
				return g
			}
		}
	}
	ctx := testCtx(t)
	cl := kgoClient(t, p, kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ClientID("left-out-producer"))
	for i := 0; i < 10; i++ {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: int32(1 + i%2), Value: []byte(fmt.Sprint("v", i))}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	kg := groupOn("kcat")
	out := runKcat(t, ctx, "", "-C", "-b", p.Addr().String(), "-G", kg, "-c", "10", "-X", "auto.offset.reset=earliest", "-f", "%p|%o\n", topic)
	if n := len(strings.Split(strings.TrimSpace(out), "\n")); n != 10 {
		t.Errorf("kcat read %d of 10: %s", n, out)
	}
	checkConsumeGroup(t, p, topic, kg, 10)
	guard.check(t)
}

// startNodeLeftOut starts a 3-node cluster whose topic has partition i led by node i, and a proxy
// that cannot open node 0's listener (another listener holds its address until the test ends);
// mods change the proxy's config further.
func startNodeLeftOut(t *testing.T, topic string, mods ...func(*Config)) (*kfake.Cluster, *brokerGuard, *testProxy) {
	t.Helper()
	c, guard := startCluster(t, kfake.SeedTopics(3, topic))
	blocker, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { blocker.Close() })
	p := startProxy(t, c, func(cfg *Config) {
		cfg.NodeAddrs = map[int32]string{0: blocker.Addr().String(), 1: "127.0.0.1:0", 2: "127.0.0.1:0"}
		for _, mod := range mods {
			mod(cfg)
		}
	})
	waitFor(t, "the proxy to report node 0's listener", func() bool { return p.Problem() != nil })
	for part := range int32(3) {
		if err := c.MoveTopicPartition(topic, part, part); err != nil {
			t.Fatal(err)
		}
	}
	return c, guard, p
}
