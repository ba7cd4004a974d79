package kafka

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
)

// TestPreferredReplicaLeftOut: node 0 is left out (its listener cannot open), and the leader of
// partition 1 (node 1) answers a rack-aware consumer's fetch with a preferred read replica, node 0
// (KIP-392: a Kafka leader whose replica selector picks a follower sends that partition with no
// records and the follower's id). Direct, a broker names only replicas the client can reach;
// through the proxy the client was told of node 0 nowhere, so the id must reach it as -1 ("read
// from the leader"), as a KIP-951 leader hint naming a node left out does. kfake never picks a
// preferred replica itself: its control hook gives the answer a Kafka leader gives, once, and
// kfake serves the fetches after it. kgo logs every preferred replica a fetch answer names
// ("fetch partitions returned preferred replicas"); it must log none, and consume everything.
// The stored, the streamed and the unobserved (frame budget taken) fetch paths, at Fetch v11 (the
// first with the field, not flexible) and the newest.
func TestPreferredReplicaLeftOut(t *testing.T) {
	for _, tc := range []struct {
		name       string
		stream     bool
		unobserved bool // the frame budget is taken: streamed through a small buffer, unobserved
		max        *kversion.Versions
	}{
		{"stored newest", false, false, nil},
		{"streamed newest", true, false, nil},
		{"unobserved newest", true, true, nil},
		{"stored v11", false, false, kversion.V2_4_0()},
		{"streamed v11", true, false, kversion.V2_4_0()},
		{"unobserved v11", true, true, kversion.V2_4_0()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := uniqueTopic(t, "preferred-left-out")
			var mods []func(*Config)
			if tc.stream {
				mods = append(mods, streamAll)
			}
			if tc.unobserved {
				mods = append(mods, func(c *Config) { c.FrameBudgetBytes = 1 })
			}
			c, guard, p := startNodeLeftOut(t, topic, mods...)
			ctx := testCtx(t)
			prod := kgoClient(t, p, kgo.RecordPartitioner(kgo.ManualPartitioner()))
			const n = 5
			for i := range n {
				if err := prod.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: 1, Value: []byte{byte('a' + i)}}).FirstErr(); err != nil {
					t.Fatal(err)
				}
			}
			ti := c.TopicInfo(topic)
			var answered atomic.Bool
			c.ControlKey(int16(kmsg.Fetch), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
				c.KeepControl()
				req := kreq.(*kmsg.FetchRequest)
				if c.CurrentNode() != 1 || req.Version < 11 || answered.Load() {
					return nil, nil, false
				}
				resp := req.ResponseKind().(*kmsg.FetchResponse)
				for _, rt := range req.Topics {
					if rt.Topic != topic && rt.TopicID != ti.TopicID {
						continue
					}
					for _, rp := range rt.Partitions {
						if rp.Partition != 1 {
							continue
						}
						pi := c.PartitionInfo(topic, 1)
						t := kmsg.NewFetchResponseTopic()
						t.Topic, t.TopicID = topic, ti.TopicID
						pt := kmsg.NewFetchResponseTopicPartition()
						pt.Partition, pt.HighWatermark, pt.LastStableOffset = 1, pi.HighWatermark, pi.LastStableOffset
						pt.PreferredReadReplica = 0
						t.Partitions = append(t.Partitions, pt)
						resp.Topics = append(resp.Topics, t)
						answered.Store(true)
						return resp, nil, true
					}
				}
				return nil, nil, false
			})
			var logs syncbuf.Buffer
			opts := []kgo.Opt{kgo.Rack("rack-a"), kgo.DisableFetchSessions(), kgo.FetchMaxWait(100 * time.Millisecond),
				kgo.WithLogger(kgo.BasicLogger(&logs, kgo.LogLevelInfo, nil)),
				kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {1: kgo.NewOffset().AtStart()}})}
			if tc.max != nil {
				opts = append(opts, kgo.MaxVersions(tc.max))
			}
			cons := kgoClient(t, p, opts...)
			for got := 0; got < n; {
				fs := cons.PollFetches(ctx)
				if err := ctx.Err(); err != nil {
					t.Fatalf("consumed %d of %d: %v", got, n, err)
				}
				got += len(fs.Records())
			}
			if !answered.Load() {
				t.Fatal("kfake's control never answered with a preferred replica: the test tested nothing")
			}
			if st := p.Stats(); tc.unobserved && st.UnobservedFetches == 0 {
				t.Fatal("no fetch answer was relayed unobserved: the case tested the streamed path")
			}
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, "preferred replica") || strings.Contains(l, "not yet known") {
					t.Errorf("the client was told of node 0, left out: %s", l)
				}
			}
			guard.check(t)
		})
	}
}

// TestRackAwareLeaderLeftOut: the leader of partition 1 (node 1) behaves as a Kafka leader with
// RackAwareReplicaSelector (replica.selector.class, KIP-392) does when its follower in the client's
// rack is node 0: it answers every fetch whose rack id is not empty with node 0 as the preferred
// read replica and no records for the partition, and serves an empty rack id itself. Node 0 left
// out, the proxy clears that id (TestPreferredReplicaLeftOut), and a consumer with client.rack set
// would ask the leader again and again and get nothing: the proxy must drop fetches' rack id while
// a node is left out. The hook gives up after maxStarved such answers (the consumer starves). With
// every node's listener open, the rack id must reach the broker as the client sent it. Fetch v11
// (the first with the field, not flexible) and the newest, with and without fetch sessions.
func TestRackAwareLeaderLeftOut(t *testing.T) {
	const maxStarved = 20
	for _, tc := range []struct {
		name     string
		leftOut  bool
		sessions bool
		max      *kversion.Versions
	}{
		{"left out newest", true, true, nil},
		{"left out newest no sessions", true, false, nil},
		{"left out v11", true, true, kversion.V2_4_0()},
		{"left out v11 no sessions", true, false, kversion.V2_4_0()},
		{"all open newest", false, true, nil},
		{"all open v11", false, true, kversion.V2_4_0()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := uniqueTopic(t, "rack-left-out")
			var c *kfake.Cluster
			var guard *brokerGuard
			var p *testProxy
			if tc.leftOut {
				c, guard, p = startNodeLeftOut(t, topic)
			} else {
				c, guard = startCluster(t, kfake.SeedTopics(3, topic))
				p = startProxy(t, c, nil)
			}
			ctx := testCtx(t)
			prod := kgoClient(t, p, kgo.RecordPartitioner(kgo.ManualPartitioner()))
			const n = 5
			produce := func() {
				for i := range n {
					if err := prod.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: 1, Value: []byte{byte('a' + i)}}).FirstErr(); err != nil {
						t.Fatal(err)
					}
				}
			}
			produce()
			ti := c.TopicInfo(topic)
			pollCtx, starve := context.WithCancel(ctx)
			defer starve()
			var mu sync.Mutex
			racks := map[string]int{} // the rack ids of the Fetch v11+ requests the brokers saw
			var named atomic.Int64    // answers naming node 0
			var incremental atomic.Int64
			c.ControlKey(int16(kmsg.Fetch), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
				c.KeepControl()
				req := kreq.(*kmsg.FetchRequest)
				if req.Version < 11 {
					return nil, nil, false
				}
				mu.Lock()
				racks[req.Rack]++
				mu.Unlock()
				if req.SessionEpoch > 0 {
					incremental.Add(1)
				}
				if !tc.leftOut || req.Rack == "" || c.CurrentNode() != 1 {
					return nil, nil, false
				}
				if named.Add(1) >= maxStarved {
					starve()
				}
				pi := c.PartitionInfo(topic, 1)
				resp := req.ResponseKind().(*kmsg.FetchResponse)
				rt := kmsg.NewFetchResponseTopic()
				rt.Topic, rt.TopicID = topic, ti.TopicID
				pt := kmsg.NewFetchResponseTopicPartition()
				pt.Partition, pt.HighWatermark, pt.LastStableOffset = 1, pi.HighWatermark, pi.LastStableOffset
				pt.PreferredReadReplica = 0
				rt.Partitions = append(rt.Partitions, pt)
				resp.Topics = append(resp.Topics, rt)
				return resp, nil, true
			})
			opts := []kgo.Opt{kgo.Rack("r0"), kgo.FetchMaxWait(100 * time.Millisecond),
				kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {1: kgo.NewOffset().AtStart()}})}
			if !tc.sessions {
				opts = append(opts, kgo.DisableFetchSessions())
			}
			if tc.max != nil {
				opts = append(opts, kgo.MaxVersions(tc.max))
			}
			cons := kgoClient(t, p, opts...)
			// Two rounds: with fetch sessions, the second is read through incremental requests.
			for got := 0; got < 2*n; {
				fs := cons.PollFetches(pollCtx)
				if err := pollCtx.Err(); err != nil {
					t.Fatalf("consumed %d of %d: the leader named node 0, left out, in %d answers: %v", got, 2*n, named.Load(), err)
				}
				if got < n && got+len(fs.Records()) >= n {
					produce()
				}
				got += len(fs.Records())
			}
			if tc.sessions && incremental.Load() == 0 {
				t.Error("no incremental fetch request reached the brokers: the fetch session was not tested")
			}
			mu.Lock()
			defer mu.Unlock()
			want := "r0"
			if tc.leftOut {
				want = ""
			}
			if len(racks) != 1 || racks[want] == 0 {
				t.Errorf("the brokers saw fetches with rack ids %v, want only %q", racks, want)
			}
			guard.check(t)
		})
	}
}

// TestClearLeftOutReplicas: the walk that clears preferred read replicas naming a node left out,
// on answers kmsg encodes, at every Fetch version with the field: only those replicas change
// (to -1), every other byte stays, through aborted transactions, records, null records and
// tagged fields.
func TestClearLeftOutReplicas(t *testing.T) {
	leftOut := func(id int32) bool { return id == 0 || id == 7 }
	for v := int16(4); v <= 18; v++ {
		resp := kmsg.NewPtrFetchResponse()
		resp.SetVersion(v)
		resp.SessionID = 9
		wantReplicas := map[[2]int32]int32{}
		for ti, name := range []string{"alpha", "beta-topic"} {
			rt := kmsg.NewFetchResponseTopic()
			rt.Topic, rt.TopicID = name, [16]byte{byte(ti + 1)}
			for pi, rep := range []int32{0, 1, -1, 7, 2} {
				pt := kmsg.NewFetchResponseTopicPartition()
				pt.Partition, pt.HighWatermark, pt.LastStableOffset = int32(pi), 100, 90
				pt.PreferredReadReplica = rep
				if pi%2 == 0 {
					at := kmsg.NewFetchResponseTopicPartitionAbortedTransaction()
					at.ProducerID, at.FirstOffset = 5, 6
					pt.AbortedTransactions = append(pt.AbortedTransactions, at)
					pt.RecordBatches = bytes.Repeat([]byte{byte(pi)}, 40+pi)
				}
				if v >= 12 && pi == 1 {
					pt.UnknownTags.Set(99, []byte("tag"))
				}
				rt.Partitions = append(rt.Partitions, pt)
				want := rep
				if v >= 11 && leftOut(rep) {
					want = -1
				}
				if v < 11 {
					want = -1 // not on the wire
				}
				wantReplicas[[2]int32{int32(ti), int32(pi)}] = want
			}
			resp.Topics = append(resp.Topics, rt)
		}
		body := resp.AppendTo(nil)
		orig := bytes.Clone(body)
		cleared, ok := clearLeftOutReplicas(body, v, leftOut)
		if !ok {
			t.Fatalf("v%d: the walk did not get through the answer", v)
		}
		wantCleared := 0
		if v >= 11 {
			wantCleared = 4 // 0 and 7, in two topics
		}
		if cleared != wantCleared {
			t.Errorf("v%d: cleared %d, want %d", v, cleared, wantCleared)
		}
		got := kmsg.NewPtrFetchResponse()
		got.SetVersion(v)
		if err := got.ReadFrom(body); err != nil {
			t.Fatalf("v%d: the answer after the walk does not decode: %v", v, err)
		}
		diff := 0
		for i := range body {
			if body[i] != orig[i] {
				diff++
			}
		}
		if diff > 4*wantCleared {
			t.Errorf("v%d: %d bytes changed, want at most %d", v, diff, 4*wantCleared)
		}
		for ti, rt := range got.Topics {
			for pi, pt := range rt.Partitions {
				if want := wantReplicas[[2]int32{int32(ti), int32(pi)}]; pt.PreferredReadReplica != want {
					t.Errorf("v%d topic %d partition %d: preferred replica %d, want %d", v, ti, pi, pt.PreferredReadReplica, want)
				}
				if pi%2 == 0 && len(pt.RecordBatches) != 40+pi {
					t.Errorf("v%d topic %d partition %d: %d record bytes, want %d", v, ti, pi, len(pt.RecordBatches), 40+pi)
				}
			}
		}
		// A cut answer is told, not walked past its end.
		if v >= 11 {
			if _, ok := clearLeftOutReplicas(bytes.Clone(orig[:len(orig)/2]), v, leftOut); ok {
				t.Errorf("v%d: a walk of half the answer reported it whole", v)
			}
		}
	}
}

// TestFetchWalkersHugeArrayLen: a compact array length of 2^31 or more is, to kmsg (and so kgo),
// negative: no elements. An answer whose topic count says 2^32-1 before its node endpoints decodes
// with kmsg, so the length-only walkers must get through it as kmsg does, not walk billions of
// topics through the tagged fields.
func TestFetchWalkersHugeArrayLen(t *testing.T) {
	for _, v := range []int16{12, 16, 18} {
		resp := kmsg.NewPtrFetchResponse()
		resp.SetVersion(v)
		if v >= 16 {
			resp.Brokers = []kmsg.FetchResponseBroker{{NodeID: 0, Host: "b0", Port: 9092}}
		}
		enc := resp.AppendTo(nil)
		const topicsAt = 4 + 2 + 4
		if enc[topicsAt] != 1 {
			t.Fatalf("v%d: topic count byte %#x, want 1 (none)", v, enc[topicsAt])
		}
		body := append(append(bytes.Clone(enc[:topicsAt]), 0xff, 0xff, 0xff, 0xff, 0x0f), enc[topicsAt+1:]...)
		got := kmsg.NewPtrFetchResponse()
		got.SetVersion(v)
		if err := got.ReadFrom(body); err != nil || len(got.Topics) != 0 || len(got.Brokers) != len(resp.Brokers) {
			t.Fatalf("v%d: kmsg reads %d topics, %d brokers, %v: the test tests nothing", v, len(got.Topics), len(got.Brokers), err)
		}
		walked := bytes.Clone(body)
		if _, ok := clearLeftOutReplicas(walked, v, func(int32) bool { return true }); !ok || !bytes.Equal(walked, body) {
			t.Errorf("v%d: clearing replicas: walked through %v, bytes kept %v", v, ok, bytes.Equal(walked, body))
		}
		if tail, err := fetchTailStart(body, v); err != nil || tail != topicsAt+5 {
			t.Errorf("v%d: tagged fields found at %d (%v), want %d", v, tail, err, topicsAt+5)
		}
	}
}
