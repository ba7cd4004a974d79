package kafka

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestSaramaLeaderlessPartition: a sarama consumer group whose topic has one partition without a
// leader consumes none of the others, through the proxy with the partition's leader left out as
// directly against a broker that answers the partition LEADER_NOT_AVAILABLE. sarama's
// RefreshMetadata retries a partition-level LEADER_NOT_AVAILABLE and then fails, and
// ConsumerGroup.Consume refreshes first: it returns the error without joining, call after call.
// The proxy's answer (leader -1, LEADER_NOT_AVAILABLE) is what a Kafka broker sends for a
// partition whose leader is offline, so the stall is sarama's own; this test fails if the proxy
// answered otherwise (Consume would then start a session, or fail differently).
func TestSaramaLeaderlessPartition(t *testing.T) {
	consumeOnce := func(t *testing.T, addr, topic string) (setups int32, err error) {
		cfg := saramaConfig("sarama-leaderless")
		cg, err := sarama.NewConsumerGroup([]string{addr}, topic+"-g", cfg)
		if err != nil {
			t.Fatalf("sarama group: %v", err)
		}
		defer cg.Close()
		h := &setupCounter{}
		err = cg.Consume(testCtx(t), []string{topic}, h)
		return h.setups.Load(), err
	}
	t.Run("direct", func(t *testing.T) {
		topic := uniqueTopic(t, "sarama-leaderless-direct")
		c, _ := startCluster(t, kfake.SeedTopics(3, topic)) // no guard: this client goes direct on purpose
		c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Metadata}, Topic: topic, Partitions: []int32{0}, Err: kerr.LeaderNotAvailable, Count: -1})
		setups, err := consumeOnce(t, c.ListenAddrs()[0], topic)
		t.Logf("direct: Consume: %v (sessions %d)", err, setups)
		if !errors.Is(err, sarama.ErrLeaderNotAvailable) || setups != 0 {
			t.Errorf("direct, partition 0 LEADER_NOT_AVAILABLE: Consume %v after %d sessions; want LEADER_NOT_AVAILABLE before any", err, setups)
		}
	})
	t.Run("proxy, leader left out", func(t *testing.T) {
		topic := uniqueTopic(t, "sarama-leaderless-proxy")
		_, guard, p := startNodeLeftOut(t, topic)
		setups, err := consumeOnce(t, p.Addr().String(), topic)
		t.Logf("through the proxy: Consume: %v (sessions %d)", err, setups)
		if !errors.Is(err, sarama.ErrLeaderNotAvailable) || setups != 0 {
			t.Errorf("through the proxy, node 0 left out: Consume %v after %d sessions; want LEADER_NOT_AVAILABLE before any, as direct", err, setups)
		}
		guard.check(t)
	})
}

// setupCounter is a sarama handler that counts the sessions started and consumes nothing.
type setupCounter struct{ setups atomic.Int32 }

func (h *setupCounter) Setup(sarama.ConsumerGroupSession) error   { h.setups.Add(1); return nil }
func (h *setupCounter) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h *setupCounter) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for range claim.Messages() {
	}
	return nil
}
