package kafka

// Several proxy instances in front of one cluster, as a team runs them for high availability
// (behind one name or load balancer, or listed together in bootstrap.servers): a client's broker
// connections can reach an instance that relayed none of its Metadata.

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// replicaPair is two proxies in front of one cluster, each with fixed node addresses of its own
// (so that each opens every node's listener at start, as a second instance does). Their bootstrap
// addresses are picked with the nodes' (freeAddrs), so that neither takes a node's port.
type replicaPair struct {
	first, second *testProxy
	// toSecond maps the first one's node addresses to the second one's, node by node.
	toSecond map[string]string
}

func startReplicaPair(t *testing.T, start func(mod func(*Config)) *testProxy) *replicaPair {
	t.Helper()
	free := freeAddrs(t, 8)
	firstNodes := map[int32]string{0: free[0], 1: free[1], 2: free[2]}
	secondNodes := map[int32]string{0: free[3], 1: free[4], 2: free[5]}
	rp := &replicaPair{
		first:    start(func(cfg *Config) { cfg.Listen, cfg.NodeAddrs = free[6], firstNodes }),
		second:   start(func(cfg *Config) { cfg.Listen, cfg.NodeAddrs = free[7], secondNodes }),
		toSecond: map[string]string{},
	}
	for id, a := range secondNodes {
		rp.toSecond[firstNodes[id]] = a
		waitFor(t, "the second instance's node listeners, opened from the cluster's metadata at start", func() bool {
			conn, err := net.Dial("tcp", a)
			if err == nil {
				conn.Close()
			}
			return err == nil
		})
	}
	return rp
}

// splitDial dials the second instance for the first one's node addresses: a client that
// bootstrapped through the first instance (whose Metadata it got) and whose broker connections
// land on the second, as behind a name shared by both after a failover.
func (rp *replicaPair) splitDial(ctx context.Context, network, addr string) (net.Conn, error) {
	if to, ok := rp.toSecond[addr]; ok {
		addr = to
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// TestReplicaNamesTopicIDsItDidNotSee: a topic created after the second instance started is
// named by id only in the Produce and Fetch requests that reach it (v13+), whose Metadata went
// through the first instance. The first such request goes through unchanged (an unknown_topic_id
// skip), and the second instance asks the cluster for its topics, so that what follows is
// injected and observed as it is through the first instance.
func TestReplicaNamesTopicIDsItDidNotSee(t *testing.T) {
	for _, tc := range []struct {
		name string
		// miss sends what reaches the second instance naming the topic by an id it has not seen;
		// then checks that what follows is injected or observed there.
		miss, then func(t *testing.T, ctx context.Context, rp *replicaPair, topic string)
	}{
		{
			name: "produce",
			miss: func(t *testing.T, ctx context.Context, rp *replicaPair, topic string) {
				cl := splitClient(t, rp, kgo.ClientID("replica-producer"), kgo.DefaultProduceTopic(topic))
				produceEach(t, ctx, cl, topic, []byte("before"))
			},
			then: func(t *testing.T, ctx context.Context, rp *replicaPair, topic string) {
				cl := splitClient(t, rp, kgo.ClientID("replica-producer"), kgo.DefaultProduceTopic(topic))
				injected := rp.second.Stats().InjectedRecords
				produceEach(t, ctx, cl, topic, []byte("after"))
				if got := rp.second.Stats().InjectedRecords - injected; got != 1 {
					t.Errorf("the second instance injected %d records of a produce after it named the topic, want 1", got)
				}
				waitFor(t, "the produce checkpoint at the second instance", func() bool {
					return len(pointsOf(rp.second, topic, pathway.Out)) > 0
				})
			},
		},
		{
			name: "fetch",
			miss: func(t *testing.T, ctx context.Context, rp *replicaPair, topic string) {
				produceKgo(t, ctx, kgoClient(t, rp.first), topic, testRecords(2, time.UnixMilli(1700003000000)))
				cl := splitClient(t, rp, kgo.ClientID("replica-consumer"), kgo.ConsumeTopics(topic),
					kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
				pollN(t, ctx, cl, 2)
			},
			then: func(t *testing.T, ctx context.Context, rp *replicaPair, topic string) {
				cl := splitClient(t, rp, kgo.ClientID("replica-consumer"), kgo.ConsumeTopics(topic),
					kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
				pollN(t, ctx, cl, 2)
				waitFor(t, "consume checkpoints at the second instance", func() bool {
					return len(pointsOf(rp.second, topic, pathway.In)) == 2
				})
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, guard := startCluster(t)
			rp := startReplicaPair(t, func(mod func(*Config)) *testProxy { return startProxy(t, c, mod) })
			ctx := testCtx(t)
			topic := uniqueTopic(t, "replica-"+tc.name)
			if err := c.CreateTopic(topic, 1, nil); err != nil { // after both instances started
				t.Fatal(err)
			}
			id := c.TopicInfo(topic).TopicID
			tc.miss(t, ctx, rp, topic)
			if _, ok := rp.first.topics.get(id); !ok {
				t.Fatal("the first instance relayed no Metadata naming the topic: the client did not bootstrap through it")
			}
			// Waited for, not read once: a Fetch answer's miss is counted by the observer, after
			// the answer reached the client.
			waitFor(t, "a request naming the topic by an id it had not seen to reach the second instance", func() bool {
				return rp.second.Stats().TopicIDMisses > 0
			})
			waitFor(t, "the second instance to name the topic id it missed", func() bool {
				_, ok := rp.second.topics.get(id)
				return ok
			})
			tc.then(t, ctx, rp, topic)
			guard.check(t)
		})
	}
}

// splitClient is a kgo client of rp's split dialer, closed when the test ends.
func splitClient(t *testing.T, rp *replicaPair, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(rp.first.Addr().String()), kgo.Dialer(rp.splitDial)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// pollN polls cl until it has n records.
func pollN(t *testing.T, ctx context.Context, cl *kgo.Client, n int) {
	t.Helper()
	got := 0
	for got < n {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("polled %d of %d records: %v", got, n, err)
		}
		got += len(fs.Records())
	}
}

// pointsOf is p's checkpoints of topic in direction d.
func pointsOf(p *testProxy, topic string, d pathway.Direction) []pathway.Point {
	pts, _ := p.rec.snapshot()
	var out []pathway.Point
	for _, pt := range pts {
		if slices.Contains(pt.EdgeTags, "topic:"+topic) && slices.Contains(pt.EdgeTags, "direction:"+string(d)) {
			out = append(out, pt)
		}
	}
	return out
}
