package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// lagHarness is a proxy with one Kafka front before a 3-broker kfake cluster, its Agent off and
// buckets 10 minutes wide, so that what a test does falls in one bucket; flushed by hand.
type lagHarness struct {
	rt      *runtime
	front   string   // the proxy's bootstrap address
	brokers []string // the cluster's own, for the ground truth
	metrics string
}

func startLagHarness(t *testing.T) *lagHarness {
	t.Helper()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.ClusterID("lag"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	cfg := &Config{
		Admin: AdminConfig{Listen: "127.0.0.1:0"},
		Kafka: []KafkaConfig{{Listen: "127.0.0.1:0", Bootstrap: cluster.ListenAddrs()}},
	}
	cfg.Agent.Disabled = true
	cfg.Agent.FlushInterval = Duration(10 * time.Minute)
	rt := startRuntime(t, cfg)
	return &lagHarness{rt: rt, front: rt.fronts[0].Addr().String(), brokers: cluster.ListenAddrs(),
		metrics: "http://" + rt.adminLn.Addr().String() + "/metrics"}
}

// client is a kgo client through the proxy, closed when the test ends.
func (h *lagHarness) client(t *testing.T, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(h.front)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// truth is kadm's lag of group on topic, asked of the brokers directly.
func (h *lagHarness) truth(t *testing.T, ctx context.Context, group, topic string) int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	lags, err := kadm.NewClient(cl).Lag(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	if err := lags.Error(); err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, l := range lags[group].Lag[topic] {
		sum += l.Lag
	}
	return sum
}

// shown flushes every bucket, the open one too, and returns the lag /metrics shows for group on
// topic (false: none).
func (h *lagHarness) shown(t *testing.T, group, topic string) (float64, bool) {
	t.Helper()
	h.rt.flusher.FlushNow(context.Background(), true)
	return metricValue(scrapeMetrics(t, h.metrics), "dsmproxy_kafka_consumer_lag_messages",
		map[string]string{"consumer_group": group, "topic": topic, "kafka_cluster_id": "lag"})
}

// produceN produces n records to partition 0 of topic through the proxy.
func (h *lagHarness) produceN(t *testing.T, ctx context.Context, topic string, n int) {
	t.Helper()
	cl := h.client(t, kgo.ClientID("orders"), kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	for i := range n {
		if err := cl.ProduceSync(ctx, &kgo.Record{Value: fmt.Appendf(nil, "r%d", i)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}

// consumeAll reads topic to its end in group through the proxy, commits, and returns the client.
func (h *lagHarness) consumeAll(t *testing.T, ctx context.Context, group, topic string, n int) *kgo.Client {
	t.Helper()
	cl := h.client(t, kgo.ClientID(group+"-1"), kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit())
	for got := 0; got < n; {
		fs := cl.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatal(err)
		}
		got += fs.NumRecords()
	}
	if err := cl.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatal(err)
	}
	return cl
}

// TestLagFollowsCommitsBack: a group's commit that goes back (its offsets reset by an admin tool,
// or a consumer that seeks back and commits) is the group's position from then on, as kadm and
// kafka-consumer-groups.sh show it, even when it comes in the bucket of the higher commit it
// replaces. /dsm and /metrics showed lag 0 for a group reset from 20 to 5 within one bucket
// (the bucket keeps the highest offset, as the tracers' do), until the group committed again.
func TestLagFollowsCommitsBack(t *testing.T) {
	h := startLagHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n, back = 20, 5
	for _, tc := range []struct {
		name     string
		commitTo func(t *testing.T, consumer *kgo.Client, group, topic string)
	}{
		{"reset by an admin client", func(t *testing.T, consumer *kgo.Client, group, topic string) {
			consumer.Close() // a group's offsets are reset while it has no members
			var os kadm.Offsets
			os.AddOffset(topic, 0, back, -1)
			resp, err := kadm.NewClient(h.client(t, kgo.ClientID("offset-reset"))).CommitOffsets(ctx, group, os)
			if err == nil {
				err = resp.Error()
			}
			if err != nil {
				t.Fatal(err)
			}
		}},
		{"the consumer commits back", func(t *testing.T, consumer *kgo.Client, group, topic string) {
			var err error
			consumer.CommitOffsetsSync(ctx, map[string]map[int32]kgo.EpochOffset{topic: {0: {Epoch: -1, Offset: back}}},
				func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, _ *kmsg.OffsetCommitResponse, e error) { err = e })
			if err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic, group := fmt.Sprintf("back-%d", time.Now().UnixNano()), fmt.Sprintf("billing-%d", time.Now().UnixNano())
			if _, err := kadm.NewClient(h.client(t)).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
				t.Fatal(err)
			}
			h.produceN(t, ctx, topic, n)
			consumer := h.consumeAll(t, ctx, group, topic, n)
			tc.commitTo(t, consumer, group, topic)
			want := h.truth(t, ctx, group, topic)
			if want != n-back {
				t.Fatalf("kadm's lag after the commit back: %d, want %d", want, n-back)
			}
			if got, ok := h.shown(t, group, topic); !ok || got != float64(want) {
				t.Errorf("lag shown %v (shown %v), want kadm's %d: the commit back to %d is the group's position", got, ok, want, back)
			}
		})
	}
}

// TestLagForgetsWhatTheClusterDeleted: offsets the cluster no longer has leave /dsm and /metrics
// when the proxy sees them go: a group deleted (kadm DeleteGroups, as kafka-consumer-groups.sh
// --delete), a group's offsets of a topic deleted (kadm DeleteOffsets), a topic deleted through
// the proxy, or deleted anywhere and created again under its name (a Metadata answer then names
// it with a new topic id), whose offsets start over. Each showed its last lag for a week: a
// recreated topic's group the old log end minus its new commit (17 where kadm showed 0), and a
// group that had committed only on the old topic its old lag, which kadm no longer shows.
func TestLagForgetsWhatTheClusterDeleted(t *testing.T) {
	h := startLagHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 20
	admin := func(t *testing.T, direct bool) *kadm.Client {
		if !direct {
			return kadm.NewClient(h.client(t, kgo.ClientID("ops")))
		}
		cl, err := kgo.NewClient(kgo.SeedBrokers(h.brokers...))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return kadm.NewClient(cl)
	}
	check := func(t *testing.T, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		// remove deletes what the cluster forgets; then kept is the group that goes on (its
		// lag must be kadm's), and gone the one whose commits the cluster no longer has.
		remove     func(t *testing.T, topic, kept, gone string)
		keptGoesOn bool
	}{
		{"group deleted", func(t *testing.T, topic, _, gone string) {
			r, err := admin(t, false).DeleteGroups(ctx, gone)
			if err == nil {
				err = r.Error()
			}
			check(t, err)
		}, false},
		{"group's offsets of the topic deleted", func(t *testing.T, topic, _, gone string) {
			r, err := admin(t, false).DeleteOffsets(ctx, gone, kadm.TopicsSet{topic: {0: {}}})
			if err == nil {
				err = r.Error()
			}
			check(t, err)
		}, false},
		{"topic deleted through the proxy and created again", func(t *testing.T, topic, _, _ string) {
			r, err := admin(t, false).DeleteTopics(ctx, topic)
			if err == nil {
				err = r.Error()
			}
			check(t, err)
			_, err = admin(t, false).CreateTopic(ctx, 1, 1, nil, topic)
			check(t, err)
		}, true},
		{"topic deleted and created again past the proxy", func(t *testing.T, topic, _, _ string) {
			r, err := admin(t, true).DeleteTopics(ctx, topic)
			if err == nil {
				err = r.Error()
			}
			check(t, err)
			_, err = admin(t, true).CreateTopic(ctx, 1, 1, nil, topic)
			check(t, err)
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := time.Now().UnixNano()
			topic, kept, gone := fmt.Sprintf("deleted-%d", id), fmt.Sprintf("kept-%d", id), fmt.Sprintf("gone-%d", id)
			_, err := admin(t, false).CreateTopic(ctx, 1, 1, nil, topic)
			check(t, err)
			h.produceN(t, ctx, topic, n)
			h.consumeAll(t, ctx, kept, topic, n).Close()
			h.consumeAll(t, ctx, gone, topic, n).Close()
			h.produceN(t, ctx, topic, 5)
			for _, g := range []string{kept, gone} {
				if got, ok := h.shown(t, g, topic); !ok || got != 5 {
					t.Fatalf("group %s before the deletion: lag %v (shown %v), want 5", g, got, ok)
				}
			}
			tc.remove(t, topic, kept, gone)
			if tc.keptGoesOn { // the topic starts over: 3 records, read and committed by kept
				h.produceN(t, ctx, topic, 3)
				h.consumeAll(t, ctx, kept, topic, 3).Close()
			}
			if got, ok := h.shown(t, gone, topic); ok {
				t.Errorf("group %s, whose commits the cluster deleted, still shows lag %v", gone, got)
			}
			if !tc.keptGoesOn {
				return
			}
			want := h.truth(t, ctx, kept, topic)
			if got, ok := h.shown(t, kept, topic); !ok || got != float64(want) {
				t.Errorf("group %s on the new topic: lag %v (shown %v), want kadm's %d", kept, got, ok, want)
			}
		})
	}
}
