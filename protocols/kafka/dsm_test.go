package kafka

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/pathway"
)

func payloadSize(r sentRecord) int64 {
	n := int64(len(r.key) + len(r.value))
	for _, h := range r.headers {
		n += int64(len(h.Key) + len(h.Value))
	}
	return n
}

// kfakeCluster is the cluster id kfake's Metadata names, which every Kafka checkpoint carries.
const kfakeCluster = "kfake"

// pointsOn returns the points whose edge tags are tags plus the cluster's, in the tracers' sorted
// order.
func pointsOn(p *testProxy, tags ...string) []pathway.Point {
	want := append(slices.Clone(tags), "kafka_cluster_id:"+kfakeCluster)
	slices.Sort(want)
	pts, _ := p.rec.snapshot()
	var out []pathway.Point
	for _, pt := range pts {
		if slices.Equal(pt.EdgeTags, want) {
			out = append(out, pt)
		}
	}
	return out
}

// TestKgoCodecsDSM: every codec, kgo's default idempotent producer. Each record arrives intact
// with exactly one pathway header; the produce checkpoint per record has the client's service,
// the produce edge and the payload size before injection; the consume checkpoint's parent is the
// produce hash and carries the group; the header the consumer decodes is the produce context.
func TestKgoCodecsDSM(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	for _, codec := range []struct {
		name string
		c    kgo.CompressionCodec
	}{{"none", kgo.NoCompression()}, {"gzip", kgo.GzipCompression()}, {"snappy", kgo.SnappyCompression()}, {"lz4", kgo.Lz4Compression()}, {"zstd", kgo.ZstdCompression()}} {
		t.Run(codec.name, func(t *testing.T) {
			topic := uniqueTopic(t, "dsm-"+codec.name)
			group := "dsm-" + codec.name
			cl := kgoClient(t, p, kgo.ClientID("orders-api-3"), kgo.ProducerBatchCompression(codec.c))
			sent := testRecords(16, time.UnixMilli(1700000800000))
			produceKgo(t, ctx, cl, topic, sent)
			got := consumeKgo(t, ctx, p, topic, group, len(sent))
			checkRecords(t, sent, got, 1)
			checkBacklogs(t, p, topic, group, got)

			prod := pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")
			if len(prod) != len(sent) {
				t.Fatalf("%d produce points, want %d", len(prod), len(sent))
			}
			var sizes, wantSizes []int64
			for i, pt := range prod {
				if pt.Service != "orders-api" || pt.ParentHash != 0 || pt.Hash != prod[0].Hash {
					t.Errorf("produce point %d: %+v", i, pt)
				}
				sizes = append(sizes, pt.PayloadSize)
			}
			for _, r := range sent {
				wantSizes = append(wantSizes, payloadSize(r))
			}
			slices.Sort(sizes)
			slices.Sort(wantSizes)
			if !slices.Equal(sizes, wantSizes) {
				t.Errorf("produce payload sizes %v, want %v", sizes, wantSizes)
			}
			for _, r := range got {
				for _, h := range r.Headers {
					if h.Key == pathway.HeaderKey {
						pc, _ := pathway.DecodeBase64(h.Value)
						if pc.Hash != prod[0].Hash {
							t.Errorf("record header hash %d, produce hash %d", pc.Hash, prod[0].Hash)
						}
					}
				}
			}
			var cons []pathway.Point
			waitFor(t, "consume points", func() bool {
				cons = pointsOn(p, "direction:in", "group:"+group, "topic:"+topic, "type:kafka")
				return len(cons) >= len(sent)
			})
			if len(cons) != len(sent) {
				t.Errorf("%d consume points, want %d", len(cons), len(sent))
			}
			for _, pt := range cons {
				if pt.ParentHash != prod[0].Hash || pt.Service != "billing-consumer" {
					t.Errorf("consume point %+v: want parent %d service billing-consumer", pt, prod[0].Hash)
				}
			}
		})
	}
	guard.check(t)
}

// TestExistingHeader: a record that already carries a pathway context (an instrumented producer)
// keeps it, gets no second header and no second produce checkpoint; its consumer's parent is the
// original context.
func TestExistingHeader(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "existing")
	orig := pathway.Context{Hash: 0xfeedface12345678, PathwayStart: time.UnixMilli(1700000000000), EdgeStart: time.UnixMilli(1700000000500)}
	value := orig.AppendBase64(nil)
	sent := []sentRecord{
		{key: []byte("instrumented"), value: []byte("a"), ts: time.UnixMilli(1700000900000), headers: []kgo.RecordHeader{{Key: pathway.HeaderKey, Value: value}}},
		{key: []byte("plain"), value: []byte("b"), ts: time.UnixMilli(1700000900001)},
	}
	cl := kgoClient(t, p, kgo.ClientID("mixed"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	produceKgo(t, ctx, cl, topic, sent)
	got := consumeKgo(t, ctx, p, topic, "g-existing", len(sent))
	for _, r := range got {
		var vals []string
		for _, h := range r.Headers {
			if h.Key == pathway.HeaderKey {
				vals = append(vals, string(h.Value))
			}
		}
		if len(vals) != 1 {
			t.Errorf("record %s: %d pathway headers", r.Key, len(vals))
		}
		if string(r.Key) == "instrumented" && vals[0] != string(value) {
			t.Errorf("existing header changed: %q -> %q", value, vals[0])
		}
	}
	if n := len(pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")); n != 1 {
		t.Errorf("%d produce points, want 1 (the instrumented record is not counted again)", n)
	}
	if st := p.Stats(); st.ExistingContext != 1 {
		t.Errorf("existing context counted %d, want 1", st.ExistingContext)
	}
	// A traced producer is no problem to track: its records joined the pathway as its tracer
	// meant, as they do on the AMQP and AWS fronts, which count them in stats alone.
	if ev := p.errs.byCategory(errtrack.ProxySkip); len(ev) > 0 {
		t.Errorf("a traced producer's records were tracked as errors: %+v", ev)
	}
	waitFor(t, "consume points", func() bool {
		return len(pointsOn(p, "direction:in", "group:g-existing", "topic:"+topic, "type:kafka")) == 2
	})
	found := false
	for _, pt := range pointsOn(p, "direction:in", "group:g-existing", "topic:"+topic, "type:kafka") {
		found = found || pt.ParentHash == orig.Hash
	}
	if !found {
		t.Errorf("no consume point has the instrumented producer's context as parent")
	}
	guard.check(t)
}

// TestReplaceExistingHeader: with RespectExistingContext off, a record's own context is the parent
// of its produce checkpoint and is replaced by the new one: each record leaves with exactly one
// pathway header, its other headers as they were, for every codec (lz4 through the transcoder).
func TestReplaceExistingHeader(t *testing.T) {
	c, guard := startCluster(t)
	off := false
	p := startProxy(t, c, func(cfg *Config) { cfg.RespectExistingContext = &off })
	ctx := testCtx(t)
	orig := pathway.Context{Hash: 0xfeedface12345678, PathwayStart: time.UnixMilli(1700000000000), EdgeStart: time.UnixMilli(1700000000500)}
	for _, tc := range []struct {
		name  string
		codec kgo.CompressionCodec
	}{{"none", kgo.NoCompression()}, {"gzip", kgo.GzipCompression()}, {"lz4", kgo.Lz4Compression()}} {
		codec := tc.name
		topic := uniqueTopic(t, "replace")
		var sent []sentRecord
		for i := 0; i < 20; i++ {
			hs := []kgo.RecordHeader{{Key: "before", Value: []byte("b")}, {Key: pathway.HeaderKey, Value: orig.AppendBase64(nil)}, {Key: "after", Value: []byte("a")}}
			if i%5 == 4 {
				hs = []kgo.RecordHeader{{Key: "before", Value: []byte("b")}, {Key: "after", Value: []byte("a")}} // a bare record in the batch
			}
			sent = append(sent, sentRecord{key: []byte(strconv.Itoa(i)), value: []byte(strings.Repeat("v", 200)), ts: time.UnixMilli(1700000900000 + int64(i)), headers: hs})
		}
		cl := kgoClient(t, p, kgo.ProducerBatchCompression(tc.codec), kgo.RecordPartitioner(kgo.ManualPartitioner()))
		produceKgo(t, ctx, cl, topic, sent)
		var produced []pathway.Point
		waitFor(t, "produce points", func() bool {
			produced = pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")
			return len(produced) == len(sent)
		})
		fromOrig := map[uint64]bool{}
		for _, pt := range produced {
			if pt.ParentHash == orig.Hash {
				fromOrig[pt.Hash] = true
			}
		}
		if len(fromOrig) != 1 {
			t.Errorf("%v: produce checkpoints with the record's own context as parent: %d distinct, want 1", codec, len(fromOrig))
		}
		for _, r := range consumeKgo(t, ctx, p, topic, "g-"+topic, len(sent)) {
			var keys []string
			var ctxVal []byte
			for _, h := range r.Headers {
				keys = append(keys, h.Key)
				if h.Key == pathway.HeaderKey {
					ctxVal = h.Value
				}
			}
			if want := []string{"before", "after", pathway.HeaderKey}; !slices.Equal(keys, want) {
				t.Errorf("%v: record %s has headers %v, want %v", codec, r.Key, keys, want)
				continue
			}
			got, err := pathway.DecodeBase64(ctxVal)
			if err != nil || got.Hash == orig.Hash {
				t.Errorf("%v: record %s kept context %v (%v)", codec, r.Key, got, err)
			}
			if n, _ := strconv.Atoi(string(r.Key)); n%5 != 4 && !fromOrig[got.Hash] {
				t.Errorf("%v: record %s carries %x, not the checkpoint chained from its own context", codec, r.Key, got.Hash)
			}
		}
	}
	guard.check(t)
}

// TestOversizeBatch: a batch that would exceed MaxBatchBytes once the header is added goes
// upstream unmodified (the broker accepts it), the skip is reported, and small batches still get
// the header.
func TestOversizeBatch(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, func(cfg *Config) { cfg.MaxBatchBytes = 700 })
	ctx := testCtx(t)
	topic := uniqueTopic(t, "oversize")
	cl := kgoClient(t, p, kgo.ProducerLinger(0), kgo.ProducerBatchCompression(kgo.NoCompression()))
	big := sentRecord{key: []byte("big"), value: []byte(strings.Repeat("x", 600)), ts: time.UnixMilli(1700001000000)}
	small := sentRecord{key: []byte("small"), value: []byte("y"), ts: time.UnixMilli(1700001000001)}
	produceKgo(t, ctx, cl, topic, []sentRecord{big})
	produceKgo(t, ctx, cl, topic, []sentRecord{small})
	got := consumeKgo(t, ctx, p, topic, "g-oversize", 2)
	for _, r := range got {
		n := 0
		for _, h := range r.Headers {
			if h.Key == pathway.HeaderKey {
				n++
			}
		}
		want := 1
		if string(r.Key) == "big" {
			want = 0
			if string(r.Value) != string(big.value) {
				t.Errorf("big record changed")
			}
		}
		if n != want {
			t.Errorf("record %s: %d pathway headers, want %d", r.Key, n, want)
		}
	}
	skips := p.errs.byCategory(errtrack.ProxySkip)
	if len(skips) == 0 {
		t.Fatalf("no ProxySkip event for the oversize batch")
	}
	if skips[0].Name != skipSizeLimit || skips[0].Messages != 1 || skips[0].Edge.Topic != topic {
		t.Errorf("skip event %+v, want size_limit for 1 message on %s", skips[0], topic)
	}
	guard.check(t)
}

// TestNodeListenersOpenAtStart: with fixed node addresses, a restarted proxy opens every node's
// listener from the cluster's metadata before any client asks, so clients holding the addresses
// from before the restart (a Java client does not go back to the bootstrap) find them open.
func TestNodeListenersOpenAtStart(t *testing.T) {
	c, guard := startCluster(t)
	// Every address the proxies listen on is picked at once: picked one by one, or left to the
	// kernel (127.0.0.1:0) after the nodes' were freed, one can be a port already picked, and
	// that node's listener never opens (its partitions answer LEADER_NOT_AVAILABLE).
	free := freeAddrs(t, 4)
	nodes := map[int32]string{0: free[1], 1: free[2], 2: free[3]}
	addrs := func(cfg *Config) {
		cfg.Listen = free[0]
		cfg.NodeAddrs = nodes
	}
	first := startProxy(t, c, addrs)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "restart")
	produceKgo(t, ctx, kgoClient(t, first), topic, testRecords(3, time.UnixMilli(1700002000000)))
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := first.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	for id, a := range nodes {
		if conn, err := net.Dial("tcp", a); err == nil {
			conn.Close()
			t.Fatalf("node %d still listening at %s after shutdown", id, a)
		}
	}
	second := startProxy(t, c, addrs)
	for id, a := range nodes {
		waitFor(t, fmt.Sprintf("node %d listening at %s", id, a), func() bool {
			conn, err := net.Dial("tcp", a)
			if err == nil {
				conn.Close()
			}
			return err == nil
		})
	}
	if second.topics.held() == 0 {
		t.Errorf("restarted proxy learned no topic ids")
	}
	// A client that only knows the node addresses (as one that cached them) produces through them.
	cl, err := kgo.NewClient(kgo.SeedBrokers(nodes[0]), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte("after restart")}).FirstErr(); err != nil {
		t.Fatalf("produce through a node port after the restart: %v", err)
	}
	if st := second.Stats(); st.InjectedRecords != 1 {
		t.Errorf("restarted proxy injected %d records, want 1", st.InjectedRecords)
	}
	guard.check(t)
}

// TestNodeListenerProblem: a broker node whose listener cannot open (another process holds its
// address) is a problem the proxy reports, naming what to change, until the address frees up and
// the listener opens.
func TestNodeListenerProblem(t *testing.T) {
	c, _ := startCluster(t)
	blocker, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	taken := blocker.Addr().String()
	p := startProxy(t, c, func(cfg *Config) {
		cfg.NodeAddrs = map[int32]string{0: taken, 1: "127.0.0.1:0", 2: "127.0.0.1:0"}
	})
	waitFor(t, "the proxy to report node 0's listener", func() bool { return p.Problem() != nil })
	if msg := p.Problem().Error(); !strings.Contains(msg, "broker node 0") || !strings.Contains(msg, taken) || !strings.Contains(msg, "node_addrs") {
		t.Errorf("problem %q does not name the node, its address and the setting", msg)
	}
	blocker.Close()
	waitFor(t, "node 0's listener to open once its address is free", func() bool { return p.Problem() == nil })
	if _, ok := p.NodeAddr(0); !ok {
		t.Errorf("node 0 has no listener although the problem cleared")
	}

	// A node that leaves the cluster is no longer a problem: Metadata stops naming it.
	c2, _ := startCluster(t)
	blocker2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer blocker2.Close()
	p2 := startProxy(t, c2, func(cfg *Config) {
		cfg.NodeAddrs = map[int32]string{0: blocker2.Addr().String(), 1: "127.0.0.1:0", 2: "127.0.0.1:0"}
	})
	waitFor(t, "the second proxy to report node 0's listener", func() bool { return p2.Problem() != nil })
	if err := c2.RemoveNode(0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the problem of a removed node to clear", func() bool { return p2.Problem() == nil })
}

// TestTopicSizeLimitLearned: a topic whose max.message.bytes is below MaxBatchBytes would refuse
// a batch the header grew past it, which the client would not have had without the proxy. The
// first batch to the topic waits for the proxy's lookup of the topic's limit and goes as it came.
// When the lookup does not answer in time (the broker holds it here), the batch goes with the
// header and the client sees the refusal once; the proxy learns the size from it, and later
// batches of the topic that would grow that far go as they came, while smaller ones still get
// the header.
func TestTopicSizeLimitLearned(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	cl := kgoClient(t, p, kgo.DisableIdempotentWrite(), kgo.ProducerLinger(0), kgo.ProducerBatchCompression(kgo.NoCompression()))
	limit := "2000"
	small := func(name string) string {
		topic := uniqueTopic(t, name)
		if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": &limit}, topic); err != nil {
			t.Fatal(err)
		}
		return topic
	}
	near := bytes.Repeat([]byte("n"), 1900) // a one-record batch of 1,970 bytes, about 2,020 with the header

	// The lookup answers: nothing is refused. (The batch may not need to wait: the request asked
	// for its topic before it spliced the batch, and the answer can be in by then.)
	first := small("small-topic-first")
	answeredLimits(p)
	err := cl.ProduceSync(ctx, &kgo.Record{Topic: first, Value: near}).FirstErr()
	p.limits.wait.Store(int64(DefaultTopicLimitWait))
	if err != nil {
		t.Fatalf("first batch to a topic whose limit the header would pass: %v", err)
	}
	if r := readTopic(t, ctx, p, first, 1)[0]; hasContext(r) {
		t.Error("the first batch was grown past its topic's limit")
	}

	// The lookup is held at the broker past DefaultTopicLimitWait.
	topic := small("small-topic")
	release := holdNext(c, kmsg.DescribeConfigs.Int16())
	err = cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: near}).FirstErr()
	release()
	if !errors.Is(err, kerr.MessageTooLarge) {
		t.Fatalf("first batch grown past the topic's limit, its lookup unanswered: %v, want MESSAGE_TOO_LARGE", err)
	}
	if p.Stats().TopicLimitWaits == 0 {
		t.Error("the batch whose lookup the broker held did not wait for it")
	}
	if evs := p.errs.byName("topic_size_limit"); len(evs) == 0 {
		t.Errorf("no topic_size_limit event for the refused batch")
	}
	produceEach(t, ctx, cl, topic, near, []byte("small")) // the same size again (accepted now), then a small batch
	// The refused batch was never stored: only the small record's checkpoint counts.
	if n := len(pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")); n != 1 {
		t.Errorf("%d produce checkpoints, want 1 (the refused batch is not counted)", n)
	}
	got := consumeKgo(t, ctx, p, topic, "g-small-topic", 2)
	for _, r := range got {
		has := slices.ContainsFunc(r.Headers, func(h kgo.RecordHeader) bool { return h.Key == pathway.HeaderKey })
		if want := len(r.Value) < 100; has != want {
			t.Errorf("record of %d bytes: pathway header %v, want %v", len(r.Value), has, want)
		}
	}
	guard.check(t)
}

// TestTopicLimitsOneLookupPerRequest: a produce request naming many topics never read asks for
// all of them before its first batch waits, so one lookup (or a few, as the reader drains its
// queue) answers them, not one round trip per topic, which would use up the request's wait and
// leave the last topics' batches to be refused.
func TestTopicLimitsOneLookupPerRequest(t *testing.T) {
	c, guard := startCluster(t, kfake.NumBrokers(1))
	p := startProxy(t, c, nil)
	answeredLimits(p)
	ctx := testCtx(t)
	cl := kgoClient(t, p, kgo.DisableIdempotentWrite(), kgo.ProducerLinger(200*time.Millisecond),
		kgo.ProducerBatchCompression(kgo.NoCompression()))
	limit := "2000"
	var topics []string
	for i := range 30 {
		topic := uniqueTopic(t, fmt.Sprintf("many-%02d", i))
		if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": &limit}, topic); err != nil {
			t.Fatal(err)
		}
		topics = append(topics, topic)
	}
	var lookups, produces atomic.Int64
	c.ControlKey(kmsg.DescribeConfigs.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		lookups.Add(1)
		return nil, nil, false
	})
	c.ControlKey(kmsg.Produce.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		produces.Add(1)
		return nil, nil, false
	})
	near := bytes.Repeat([]byte("n"), 1900) // a one-record batch of 1,970 bytes, about 2,020 with the header
	var recs []*kgo.Record
	for _, topic := range topics {
		recs = append(recs, &kgo.Record{Topic: topic, Value: near})
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce to %d topics whose limit the header would pass: %v", len(topics), err)
	}
	if n := produces.Load(); n != 1 {
		t.Skipf("kgo sent %d produce requests, not the one this test is about", n)
	}
	// Usually one or two; a loaded machine can let the reader start a lookup or two more while
	// the request is still asking. One per topic is what this is about.
	if n := lookups.Load(); n > 10 {
		t.Errorf("%d DescribeConfigs lookups for one request's %d topics, want well under one per topic", n, len(topics))
	}
	guard.check(t)
}

// TestAcksZeroTopicLimit: acks=0 batches that the header would grow past the topic's
// max.message.bytes would be refused with no answer, their records lost. The proxy reads the
// topic's limit from the cluster and sends those batches as they came; none is lost, and the
// smaller ones get the header.
func TestAcksZeroTopicLimit(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	answeredLimits(p)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "acks0-small-topic")
	cl := kgoClient(t, p, kgo.RequiredAcks(kgo.NoAck()), kgo.DisableIdempotentWrite(), kgo.DefaultProduceTopic(topic),
		kgo.ProducerLinger(0), kgo.ProducerBatchCompression(kgo.NoCompression()))
	limit := "2000"
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": &limit}, topic); err != nil {
		t.Fatal(err)
	}
	produceEach(t, ctx, cl, topic, []byte("first")) // asks for the topic's limit, and waits for it
	waitFor(t, "the proxy to read the topic's limit", func() bool { return p.limits.known(topic) == 2000 })
	near := bytes.Repeat([]byte("n"), 1900) // a one-record batch of 1,970 bytes, about 2,020 with the header
	for range 3 {
		produceEach(t, ctx, cl, topic, near, []byte("small"))
	}
	produceEach(t, ctx, cl, topic, []byte("last"))

	got := readTopic(t, ctx, p, topic, 8) // before the proxy read limits, the "nnn" ones were lost
	var values []string
	for _, r := range got {
		has, want := hasContext(r), len(r.Value) < 100
		if has != want {
			t.Errorf("record %.10q (%d bytes): pathway header %v, want %v", r.Value, len(r.Value), has, want)
		}
		values = append(values, fmt.Sprintf("%.5s", r.Value))
	}
	if want := []string{"first", "nnnnn", "small", "nnnnn", "small", "nnnnn", "small", "last"}; !slices.Equal(values, want) {
		t.Errorf("consumed %q, want %q (acks=0 records lost)", values, want)
	}
	if n := len(p.errs.byName("topic_limit_unknown")); n != 0 {
		t.Errorf("%d topic_limit_unknown events, want 0 (the first batch waited for the limit)", n)
	}
	if n := len(p.errs.byName("topic_size_limit")); n != 3 {
		t.Errorf("%d topic_size_limit events, want 3 (the batches near the limit)", n)
	}
	guard.check(t)
}

// TestOverLimitAsSentNoSkip: a batch already over its topic's max.message.bytes as the client
// sent it is refused whatever the proxy does: the client's MESSAGE_TOO_LARGE is tracked, and the
// proxy, which leaves it as it came, reports no topic_size_limit skip of its own (a batch the
// header alone would push over still does).
func TestOverLimitAsSentNoSkip(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	answeredLimits(p)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "over-as-sent")
	cl := kgoClient(t, p, kgo.DisableIdempotentWrite(), kgo.ProducerLinger(0), kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.RecordRetries(0))
	limit := "2000"
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": &limit}, topic); err != nil {
		t.Fatal(err)
	}
	produceEach(t, ctx, cl, topic, []byte("first"))
	waitFor(t, "the proxy to read the topic's limit", func() bool { return p.limits.known(topic) == 2000 })

	for range 2 {
		err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: bytes.Repeat([]byte("b"), 3000)}).FirstErr()
		if !errors.Is(err, kerr.MessageTooLarge) {
			t.Fatalf("a 3,000-byte record to a topic of 2,000: %v, want MESSAGE_TOO_LARGE", err)
		}
	}
	waitFor(t, "both refusals tracked", func() bool {
		n := 0
		for _, e := range p.errs.byCategory(errtrack.BrokerError) {
			if e.Name == "MESSAGE_TOO_LARGE" && e.Edge.Topic == topic {
				n++
			}
		}
		return n == 2
	})
	if evs := p.errs.byName("topic_size_limit"); len(evs) != 0 {
		t.Errorf("%d topic_size_limit skips for batches over the limit as sent, want 0: %+v", len(evs), evs)
	}
	produceEach(t, ctx, cl, topic, bytes.Repeat([]byte("n"), 1900)) // about 2,020 with the header
	if n := len(p.errs.byName("topic_size_limit")); n != 1 {
		t.Errorf("%d topic_size_limit skips for a batch the header would push over, want 1", n)
	}
	guard.check(t)
}

// TestTopicConfigsAfterIdleClose: a broker closes idle connections (connections.max.idle.ms),
// the proxy's own for topic configs too; the next lookup takes a new one, and the proxy does
// not mistake the close for a cluster that refuses it.
func TestTopicConfigsAfterIdleClose(t *testing.T) {
	c, guard := startCluster(t)
	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	ctx := testCtx(t)
	cl := kgoClient(t, p)
	for i, topic := range []string{uniqueTopic(t, "before-close"), uniqueTopic(t, "after-close")} {
		if i == 1 {
			guard.closeAll()
		}
		produceKgo(t, ctx, cl, topic, testRecords(1, time.UnixMilli(1700000760000)))
		waitFor(t, "the proxy to read "+topic+"'s limit", func() bool { return p.limits.known(topic) == DefaultMaxBatchBytes })
	}
	if strings.Contains(logs.String(), "does not let the proxy read topic configs") {
		t.Errorf("an idle close was taken for a refusal:\n%s", logs.String())
	}
	guard.check(t)
}

// TestTopicLimitsUnreadable: on a cluster that wants SASL the proxy, which has no credentials,
// does not read topic configs (each try would be a failed login at the broker), and says so.
// acks=0 batches then go without the header, unless the operator vouches for every topic's limit
// (InjectAcks0UnknownLimit); acks=all batches get it either way.
func TestTopicLimitsUnreadable(t *testing.T) {
	c, guard := startCluster(t, saslUsers...)
	login := kgo.SASL(plain.Auth{User: "plainuser", Pass: "plainpw"}.AsMechanism())
	for _, tc := range []struct {
		name    string
		vouched bool
		acks    kgo.Acks
		want    int
	}{
		{"acks0", false, kgo.NoAck(), 0},
		{"acks0-vouched", true, kgo.NoAck(), 1},
		{"acks-all", false, kgo.AllISRAcks(), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncbuf.Buffer
			p := startProxy(t, c, func(cfg *Config) { cfg.InjectAcks0UnknownLimit, cfg.Log = tc.vouched, zerolog.New(&logs) })
			ctx := testCtx(t)
			topic := uniqueTopic(t, "unreadable-"+tc.name)
			cl := kgoClient(t, p, login, kgo.RequiredAcks(tc.acks), kgo.DisableIdempotentWrite())
			if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
				t.Fatal(err)
			}
			sent := testRecords(4, time.UnixMilli(1700000750000))
			produceKgo(t, ctx, cl, topic, sent)
			got := consumeKgo(t, ctx, p, topic, "g-unreadable-"+tc.name, len(sent), login)
			checkRecords(t, sent, got, tc.want)
			waitFor(t, "the proxy to say it does not read topic configs", func() bool {
				return strings.Contains(logs.String(), "clients authenticate with SASL")
			})
			if strings.Contains(logs.String(), "DescribeConfigs") {
				t.Errorf("the proxy sent DescribeConfigs to a cluster whose clients authenticate:\n%s", logs.String())
			}
		})
	}
	guard.check(t)
}

// TestRefusedSASLKeepsConfigReads: one client trying SASL against a cluster that does not speak
// it (refused) does not stop the proxy reading topic limits, on which acks=0 batches depend.
func TestRefusedSASLKeepsConfigReads(t *testing.T) {
	c, _ := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	prober := kgoClient(t, p, kgo.SASL(plain.Auth{User: "u", Pass: "p"}.AsMechanism()))
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := prober.Ping(pctx)
	cancel()
	if err == nil {
		t.Fatal("a SASL client was accepted by a cluster without SASL")
	}
	topic := uniqueTopic(t, "after-sasl-probe")
	produceKgo(t, ctx, kgoClient(t, p), topic, testRecords(1, time.UnixMilli(1700000770000)))
	waitFor(t, "the proxy to read the topic's limit", func() bool { return p.limits.known(topic) > 0 })
}

// TestTopicLimitBoundary: a batch the header grows to exactly the topic's max.message.bytes
// gets it (the broker accepts a batch of that size, log overhead included); one byte more and
// it goes as it came. The grown size is measured where the broker receives it.
func TestTopicLimitBoundary(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	answeredLimits(p)
	ctx := testCtx(t)
	received := func(c *kfake.Cluster) func() []int {
		var mu sync.Mutex
		var sizes []int // partition records sizes the broker got, in order (topics may be named by id)
		c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
			c.KeepControl()
			mu.Lock()
			defer mu.Unlock()
			for _, tp := range req.(*kmsg.ProduceRequest).Topics {
				for _, part := range tp.Partitions {
					sizes = append(sizes, len(part.Records))
				}
			}
			return nil, nil, false
		})
		return func() []int { mu.Lock(); defer mu.Unlock(); return slices.Clone(sizes) }
	}
	viaProxy := received(c)
	opts := []kgo.Opt{kgo.RequiredAcks(kgo.NoAck()), kgo.DisableIdempotentWrite(), kgo.ProducerLinger(0),
		kgo.ProducerBatchCompression(kgo.NoCompression())}
	cl := kgoClient(t, p, opts...)
	value := bytes.Repeat([]byte("v"), 1500)
	// The size of this one-record batch as the client sends it (to a cluster of its own, reached
	// directly), then grown through the proxy, on a topic with the default limit.
	bareCluster, _ := startCluster(t)
	sentBare := received(bareCluster)
	direct, err := kgo.NewClient(append(opts, kgo.SeedBrokers(bareCluster.ListenAddrs()...))...)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	probe := uniqueTopic(t, "probe")
	for _, cl := range []*kgo.Client{direct, cl} {
		if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, nil, probe); err != nil {
			t.Fatal(err)
		}
		produceEach(t, ctx, cl, probe, value)
	}
	var bare, grown int
	waitFor(t, "the brokers to get both probe batches", func() bool {
		b, g := sentBare(), viaProxy()
		if len(b) < 1 || len(g) < 1 {
			return false
		}
		bare, grown = b[0], g[0]
		return true
	})
	if grown <= bare {
		t.Fatalf("the probe batch was not grown: %d bytes, then %d", bare, grown)
	}
	for _, tc := range []struct {
		limit  int
		header bool
	}{{grown, true}, {grown - 1, false}} {
		topic := uniqueTopic(t, fmt.Sprintf("limit-%d", tc.limit))
		limit := strconv.Itoa(tc.limit)
		if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": &limit}, topic); err != nil {
			t.Fatal(err)
		}
		produceEach(t, ctx, cl, topic, value) // waits for the topic's limit
		if has := hasContext(readTopic(t, ctx, p, topic, 1)[0]); has != tc.header {
			t.Errorf("batch grown to %d bytes, topic limit %d: pathway header %v, want %v", grown, tc.limit, has, tc.header)
		}
	}
	guard.check(t)
}

// TestTopicLimitRecompressed: a topic whose compression.type is not the batch's codec has the
// broker recompress the batch and check its size again; the proxy then counts the grown batch
// uncompressed. An lz4 batch that fits compressed but not uncompressed goes without the header.
func TestTopicLimitRecompressed(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	answeredLimits(p)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "recompressed")
	cl := kgoClient(t, p, kgo.RequiredAcks(kgo.NoAck()), kgo.DisableIdempotentWrite(), kgo.DefaultProduceTopic(topic),
		kgo.ProducerLinger(0), kgo.ProducerBatchCompression(kgo.Lz4Compression()))
	limit, compression := "2000", "uncompressed"
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": &limit, "compression.type": &compression}, topic); err != nil {
		t.Fatal(err)
	}
	produceEach(t, ctx, cl, topic, []byte("first"))                 // waits for the topic's limit
	produceEach(t, ctx, cl, topic, bytes.Repeat([]byte("z"), 1950)) // a few dozen bytes lz4-compressed, about 2,070 uncompressed with the header
	produceEach(t, ctx, cl, topic, []byte("small"))
	got := readTopic(t, ctx, p, topic, 3)
	for i, want := range []bool{true, false, true} {
		if has := hasContext(got[i]); has != want {
			t.Errorf("record %d (%d bytes): pathway header %v, want %v", i, len(got[i].Value), has, want)
		}
	}
	guard.check(t)
}

// TestConsumeProduceLink: with linking on, a client that consumes and then produces (a router:
// one kgo client, one service, one address) gets the consume checkpoint as the parent of its
// produce checkpoint, so the pathway runs on through it; another service producing at the same
// time does not, and with linking off neither does the router.
func TestConsumeProduceLink(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprint("link=", on), func(t *testing.T) {
			c, _ := startCluster(t)
			p := startProxy(t, c, func(cfg *Config) { cfg.LinkConsumeProduce, cfg.LinkWindow = on, time.Hour })
			ctx := testCtx(t)
			in, out := uniqueTopic(t, "link-in"), uniqueTopic(t, "link-out")
			produceKgo(t, ctx, kgoClient(t, p, kgo.ClientID("source-app")), in, testRecords(4, time.UnixMilli(1700001000000)))

			router := kgoClient(t, p, kgo.ClientID("router"), kgo.ConsumeTopics(in), kgo.ConsumerGroup("g-router"),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
			for got := 0; got < 4; {
				fs := router.PollFetches(ctx)
				if err := ctx.Err(); err != nil {
					t.Fatalf("router consumed %d of 4: %v", got, err)
				}
				got += len(fs.Records())
			}
			var cons []pathway.Point
			waitFor(t, "router's consume points", func() bool {
				cons = pointsOn(p, "direction:in", "group:g-router", "topic:"+in, "type:kafka")
				return len(cons) == 4
			})
			produceKgo(t, ctx, router, out, testRecords(1, time.UnixMilli(1700001000100)))
			produceKgo(t, ctx, kgoClient(t, p, kgo.ClientID("other-app")), out, testRecords(1, time.UnixMilli(1700001000200)))

			parents := map[string]uint64{}
			for _, pt := range pointsOn(p, "direction:out", "topic:"+out, "type:kafka") {
				parents[pt.Service] = pt.ParentHash
			}
			wantRouter := uint64(0)
			if on {
				wantRouter = cons[0].Hash
			}
			if got, ok := parents["router"]; !ok || got != wantRouter {
				t.Errorf("router's produce parent %d (seen %v), want %d", got, ok, wantRouter)
			}
			if got, ok := parents["other-app"]; !ok || got != 0 {
				t.Errorf("other-app's produce parent %d (seen %v), want none", got, ok)
			}
		})
	}
}

// checkChain: the n records produced to topic have n produce points of producer's service, with
// no parent and one hash (one service, one edge), and the group's n consume points follow it.
func checkChain(t *testing.T, p *testProxy, topic, group, producer string, n int) {
	t.Helper()
	prod := pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")
	if len(prod) != n {
		t.Errorf("%d produce points on %s, want %d", len(prod), topic, n)
		return
	}
	for i, pt := range prod {
		if pt.Service != producer || pt.ParentHash != 0 || pt.Hash != prod[0].Hash {
			t.Errorf("produce point %d on %s: service %q parent %x hash %x; want %s, none, %x", i, topic, pt.Service, pt.ParentHash, pt.Hash, producer, prod[0].Hash)
		}
	}
	var cons []pathway.Point
	waitFor(t, fmt.Sprintf("%d consume points of %s on %s", n, group, topic), func() bool {
		cons = pointsOn(p, "direction:in", "group:"+group, "topic:"+topic, "type:kafka")
		return len(cons) >= n
	})
	for _, pt := range cons {
		if pt.ParentHash != prod[0].Hash {
			t.Errorf("consume point of %s on %s has parent %x, not the produce hash %x", group, topic, pt.ParentHash, prod[0].Hash)
		}
	}
}

// checkConsumeGroup waits for n consume checkpoints on topic that carry group: the proxy tied
// the client's fetches to the group it joined.
func checkConsumeGroup(t *testing.T, p *testProxy, topic, group string, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d consume points of %s tagged group:%s", n, topic, group), func() bool {
		return len(pointsOn(p, "direction:in", "group:"+group, "topic:"+topic, "type:kafka")) >= n
	})
}
