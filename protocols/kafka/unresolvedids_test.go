package kafka

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestAssignedTopicIDLearnedLater: a KIP-848 heartbeat names its member's topics by id, and the
// proxy's id map lost the id (here max_topic_ids is 1: it keeps two ids, in two generations and
// none as used, so an answer naming three it does not hold evicts every other) whenever the
// assignment comes. The client knows the id and does not
// ask again, and the assignment does not change again, so it is sent no more. When a later
// Metadata answer (the client's periodic refresh) teaches the proxy the id, the member's
// partitions must become known: with another group behind the same client key (one host, one
// client.id), a member left partial gives its fetches no group at all.
func TestAssignedTopicIDLearnedLater(t *testing.T) {
	// Every heartbeat of group a is held, so holds follow each other on one connection, where
	// kfake's in-order queue of held requests can get two bsleep.waitQueue goroutines writing
	// its head (a race in kfake). Its out-of-order set hands each woken request to one goroutine;
	// kfake handles a connection's requests one at a time either way, so the answers are the same.
	c, guard := startCluster(t, kfake.SleepOutOfOrder())
	p := startProxy(t, c, func(cfg *Config) { cfg.MaxTopicIDs = 1 })
	ctx := testCtx(t)
	const id = "ids-later-consumer"
	prefix := uniqueTopic(t, "ids-later")
	other, topic, groupA := prefix+"-other", prefix+"-a", prefix+"-a"
	prod := kgoClient(t, p)
	produceKgo(t, ctx, prod, other, testRecords(3, time.UnixMilli(1700000800000)))
	produceKgo(t, ctx, prod, topic, testRecords(3, time.UnixMilli(1700000800000)))
	evict1, evict2 := prefix+"-evict1", prefix+"-evict2"
	for _, e := range []string{evict1, evict2} {
		if err := c.CreateTopic(e, 1, nil); err != nil {
			t.Fatal(err)
		}
	}
	metadata := func(names ...string) {
		req := kmsg.NewPtrMetadataRequest()
		for _, name := range names {
			rt := kmsg.NewMetadataRequestTopic()
			rt.Topic = kmsg.StringPtr(name)
			req.Topics = append(req.Topics, rt)
		}
		if _, err := req.RequestWith(ctx, prod); err != nil {
			t.Errorf("metadata of %s: %v", names, err)
		}
	}

	// Group b, classic, reads the other topic under the same key.
	b := kgoClient(t, p, kgo.ClientID(id), kgo.ConsumeTopics(other), kgo.ConsumerGroup(prefix+"-b"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	for n := 0; n < 3; {
		fs := b.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("group b read %d of 3: %v", n, err)
		}
		n += len(fs.Records())
	}

	// Before the coordinator answers each of group a's heartbeats, a Metadata answer naming two
	// topics no client uses, then the other topic (which group b's fetches keep naming), evicts
	// a's topic from the proxy's map.
	var evict atomic.Bool
	evict.Store(true)
	c.ControlKey(kmsg.ConsumerGroupHeartbeat.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		if req.(*kmsg.ConsumerGroupHeartbeatRequest).Group == groupA && evict.Load() {
			c.SleepControl(func() { metadata(evict1, evict2, other) })
		}
		return nil, nil, false
	})
	c.KeepControl()
	misses := p.Stats().TopicIDMisses
	a := kgoClient(t, p, kgo.ClientID(id), kgo.ConsumeTopics(topic), kgo.ConsumerGroup(groupA), kgo.ServerSideBalancer(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	var part int32 = -1
	for n := 0; n < 3; {
		fs := a.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("group a read %d of 3: %v", n, err)
		}
		if rs := fs.Records(); len(rs) > 0 {
			part = rs[0].Partition
		}
		n += len(fs.Records())
	}
	evict.Store(false)
	if p.Stats().TopicIDMisses == misses {
		t.Fatalf("group a's assignment named an id the proxy knew: the case is not tested")
	}
	metadata(topic) // the client's next refresh
	if g := p.groupOf(id, topic, part); g != groupA {
		t.Errorf("partition %d of %s once its id is known: group %q, want %q", part, topic, g, groupA)
	}
	guard.check(t)
}
