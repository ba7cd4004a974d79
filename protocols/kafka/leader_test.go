package kafka

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

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
