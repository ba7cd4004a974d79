package kafka

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// sentRecord is what a test produced, to compare with what a consumer got.
type sentRecord struct {
	key, value []byte
	ts         time.Time
	headers    []kgo.RecordHeader
}

func testRecords(n int, base time.Time) []sentRecord {
	out := make([]sentRecord, n)
	for i := range out {
		r := sentRecord{key: []byte(fmt.Sprintf("k%d", i)), value: []byte(fmt.Sprintf("value-%d", i)), ts: base.Add(time.Duration(i) * time.Millisecond)}
		switch i % 4 {
		case 1:
			r.key = nil // null key
		case 2:
			r.value = nil // null value
			r.headers = []kgo.RecordHeader{{Key: "h1", Value: []byte("v1")}, {Key: "empty", Value: nil}}
		case 3:
			r.headers = []kgo.RecordHeader{{Key: "trace", Value: []byte("xyz")}}
		}
		out[i] = r
	}
	return out
}

// dialRecorder records every address a client dials.
type dialRecorder struct {
	mu    sync.Mutex
	addrs []string
}

func (d *dialRecorder) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, addr)
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func kgoClient(t *testing.T, p *testProxy, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	dr := &dialRecorder{}
	opts = append([]kgo.Opt{kgo.SeedBrokers(p.Addr().String()), kgo.Dialer(dr.dial), kgo.AllowAutoTopicCreation()}, opts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cl.Close()
		dr.mu.Lock()
		defer dr.mu.Unlock()
		for _, a := range dr.addrs {
			if !p.isProxyAddr(a) {
				t.Errorf("kgo dialed %s, which is not a proxy listener", a)
			}
		}
	})
	return cl
}

// isProxyAddr reports whether addr is the bootstrap or a node listener of p.
func (p *Proxy) isProxyAddr(addr string) bool {
	if addr == p.Addr().String() {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, n := range p.nodes {
		if n.ln.Addr().String() == addr {
			return true
		}
	}
	return false
}

func produceKgo(t *testing.T, ctx context.Context, cl *kgo.Client, topic string, recs []sentRecord) {
	t.Helper()
	krs := make([]*kgo.Record, len(recs))
	for i, r := range recs {
		krs[i] = &kgo.Record{Topic: topic, Key: r.key, Value: r.value, Timestamp: r.ts, Headers: r.headers}
	}
	if err := cl.ProduceSync(ctx, krs...).FirstErr(); err != nil {
		t.Fatalf("produce to %s: %v", topic, err)
	}
}

// consumeKgo reads n records from topic in group (committing them) and returns them.
func consumeKgo(t *testing.T, ctx context.Context, p *testProxy, topic, group string, n int, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	opts = append([]kgo.Opt{kgo.ConsumeTopics(topic), kgo.ConsumerGroup(group), kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.ClientID("billing-consumer-1")}, opts...)
	cl := kgoClient(t, p, opts...)
	var got []*kgo.Record
	for len(got) < n {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %d of %d records from %s: %v", len(got), n, topic, err)
		}
		fs.EachError(func(tp string, p int32, err error) { t.Logf("fetch error %s/%d: %v", tp, p, err) })
		got = append(got, fs.Records()...)
	}
	if err := cl.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	return got
}

// produceEach produces each value to topic in a request of its own (with linger 0, a batch of
// one record), in order.
func produceEach(t *testing.T, ctx context.Context, cl *kgo.Client, topic string, values ...[]byte) {
	t.Helper()
	for _, v := range values {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: v}).FirstErr(); err != nil {
			t.Fatalf("produce %d bytes to %s: %v", len(v), topic, err)
		}
	}
}

// readTopic reads n records of topic from its start, without a group (opts: a login, say).
func readTopic(t *testing.T, ctx context.Context, p *testProxy, topic string, n int, opts ...kgo.Opt) []*kgo.Record {
	t.Helper()
	cl := kgoClient(t, p, append([]kgo.Opt{kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}, opts...)...)
	var got []*kgo.Record
	for len(got) < n {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("read %d of %d records from %s: %v", len(got), n, topic, err)
		}
		got = append(got, fs.Records()...)
	}
	return got
}

// hasContext: r carries a pathway header.
func hasContext(r *kgo.Record) bool {
	return slices.ContainsFunc(r.Headers, func(h kgo.RecordHeader) bool { return h.Key == pathway.HeaderKey })
}

// checkRecords compares consumed records with sent ones: key, value, timestamp and original
// headers identical, plus exactly wantCtx dd-pathway-ctx-base64 headers that decode.
func checkRecords(t *testing.T, sent []sentRecord, got []*kgo.Record, wantCtx int) {
	t.Helper()
	if len(got) != len(sent) {
		var b strings.Builder
		for _, r := range got {
			fmt.Fprintf(&b, "\n  partition %d offset %d key %q", r.Partition, r.Offset, r.Key)
		}
		t.Fatalf("got %d records, sent %d:%s", len(got), len(sent), b.String())
	}
	byKeyVal := make(map[string]*kgo.Record)
	for _, r := range got {
		byKeyVal[fmt.Sprintf("%q|%q|%d", r.Key, r.Value, r.Timestamp.UnixMilli())] = r
	}
	for _, s := range sent {
		r := byKeyVal[fmt.Sprintf("%q|%q|%d", s.key, s.value, s.ts.UnixMilli())]
		if r == nil {
			t.Errorf("record key=%q value=%q ts=%v not consumed", s.key, s.value, s.ts)
			continue
		}
		if (s.key == nil) != (r.Key == nil) || (s.value == nil) != (r.Value == nil) {
			t.Errorf("record %q: null-ness of key/value changed", s.key)
		}
		orig, nctx := pathwayHeaders(t, r)
		if nctx != wantCtx {
			t.Errorf("record %q: %d pathway headers, want %d", s.key, nctx, wantCtx)
		}
		if len(orig) != len(s.headers) {
			t.Errorf("record %q: headers %v, want %v", s.key, orig, s.headers)
			continue
		}
		for i := range orig {
			if orig[i].Key != s.headers[i].Key || string(orig[i].Value) != string(s.headers[i].Value) || (orig[i].Value == nil) != (s.headers[i].Value == nil) {
				t.Errorf("record %q: header %d = %q:%q, want %q:%q", s.key, i, orig[i].Key, orig[i].Value, s.headers[i].Key, s.headers[i].Value)
			}
		}
	}
}

// pathwayHeaders counts r's pathway headers, failing t for one that does not decode, and
// returns the others in order.
func pathwayHeaders(t *testing.T, r *kgo.Record) (others []kgo.RecordHeader, n int) {
	t.Helper()
	for _, h := range r.Headers {
		if h.Key == pathway.HeaderKey {
			n++
			if _, err := pathway.DecodeBase64(h.Value); err != nil {
				t.Errorf("record %q: pathway header %q does not decode: %v", r.Key, h.Value, err)
			}
			continue
		}
		others = append(others, h)
	}
	return others, n
}

func TestKgoRelay(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, nil)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "relay")
	cl := kgoClient(t, p, kgo.ClientID("orders-api-3"), kgo.DefaultProduceTopic(topic))
	sent := testRecords(20, time.UnixMilli(1700000000000))
	produceKgo(t, ctx, cl, topic, sent)
	got := consumeKgo(t, ctx, p, topic, "g-relay", len(sent))
	checkRecords(t, sent, got, wantInjected)
	checkBacklogs(t, p, topic, "g-relay", got)
	guard.check(t)
	if st := p.Stats(); st.UnknownCorrIDs != 0 || st.DecodeErrors != 0 {
		t.Errorf("stats %+v", st)
	}
	if ev := p.errs.byCategory(errtrack.DecodeError); len(ev) > 0 {
		t.Errorf("decode errors: %+v", ev)
	}
}

// checkBacklogs checks the three backlog kinds for topic against the consumed records: per
// partition the last produced offset, the high watermark (next offset) and group's commit.
// checkDelivered runs the checks every client test makes once a group consumed what producer
// sent through the proxy: records intact with one pathway header each, the three backlog kinds,
// consume points tagged with the group, and consume points chained to the produce hash.
func checkDelivered(t *testing.T, p *testProxy, topic, group, producer string, sent []sentRecord, got []*kgo.Record) {
	t.Helper()
	checkRecords(t, sent, got, wantInjected)
	checkBacklogs(t, p, topic, group, got)
	checkConsumeGroup(t, p, topic, group, len(sent))
	checkChain(t, p, topic, group, producer, len(sent))
}

func checkBacklogs(t *testing.T, p *testProxy, topic, group string, got []*kgo.Record) {
	t.Helper()
	checkBacklogsMarked(t, p, topic, group, got, 0)
}

// checkBacklogsMarked is checkBacklogs for partitions whose log holds, after the records, that many
// transaction markers: they count in the high watermark, not in the consumer's commit.
func checkBacklogsMarked(t *testing.T, p *testProxy, topic, group string, got []*kgo.Record, markers int64) {
	t.Helper()
	next := map[int32]int64{}
	for _, r := range got {
		next[r.Partition] = max(next[r.Partition], r.Offset+1)
	}
	waitFor(t, "backlogs of "+topic, func() bool {
		_, offs := p.rec.snapshot()
		seen := map[pathway.OffsetKind]map[int32]int64{}
		for _, o := range offs {
			if o.Topic != topic || o.Kind == pathway.KafkaCommit && o.Group != group {
				continue
			}
			if o.ClusterID != kfakeCluster {
				t.Errorf("%v offset of %s without the cluster id: %+v", o.Kind, topic, o)
			}
			if seen[o.Kind] == nil {
				seen[o.Kind] = map[int32]int64{}
			}
			if v, ok := seen[o.Kind][o.Partition]; !ok || o.Value > v {
				seen[o.Kind][o.Partition] = o.Value
			}
		}
		for part, n := range next {
			if seen[pathway.KafkaProduce][part] != n-1 || seen[pathway.KafkaHighWatermark][part] != n+markers || seen[pathway.KafkaCommit][part] != n {
				t.Logf("partition %d: produce %d hwm %d commit %d, want %d %d %d", part,
					seen[pathway.KafkaProduce][part], seen[pathway.KafkaHighWatermark][part], seen[pathway.KafkaCommit][part], n-1, n+markers, n)
				return false
			}
		}
		return true
	})
}

// TestKgoVersions: kgo capped at older Kafka versions sends older Produce, Fetch (before fetch
// sessions, before topic ids), Metadata and group requests; consumers in a group get the same
// records, backlogs and chain as at the newest versions.
func TestKgoVersions(t *testing.T) {
	c, guard := startCluster(t)
	rv := newRequestVersions()
	p := startProxyWith(t, c, nil, func(p *Proxy) { p.tap = rv.tap })
	ctx := testCtx(t)
	for _, tc := range []struct {
		name string
		v    *kversion.Versions
	}{
		{"0.11", kversion.V0_11_0()},
		{"1.1", kversion.V1_1_0()},
		{"2.4", kversion.V2_4_0()},
		{"3.0", kversion.V3_0_0()},
		{"3.5", kversion.V3_5_0()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rv.setLabel(tc.name)
			topic := uniqueTopic(t, "kgo-v"+tc.name)
			group := "kgo-v" + tc.name
			cl := kgoClient(t, p, kgo.ClientID("kgo-producer"), kgo.MaxVersions(tc.v), kgo.ProducerBatchCompression(kgo.GzipCompression()))
			sent := testRecords(12, time.UnixMilli(1700000600000))
			produceKgo(t, ctx, cl, topic, sent)
			got := consumeKgo(t, ctx, p, topic, group, len(sent), kgo.MaxVersions(tc.v))
			checkDelivered(t, p, topic, group, "kgo-producer", sent, got)
			t.Logf("requests: %s", rv.of(tc.name))
		})
	}
	guard.check(t)
}

// requestVersions is a Proxy tap that records which request versions clients sent, under the
// label set when they sent them.
type requestVersions struct {
	mu    sync.Mutex
	label string
	seen  map[string]map[string]bool
}

func newRequestVersions() *requestVersions {
	return &requestVersions{seen: map[string]map[string]bool{}}
}

func (rv *requestVersions) setLabel(l string) {
	rv.mu.Lock()
	rv.label = l
	rv.mu.Unlock()
}

func (rv *requestVersions) tap(h requestHeader, _ []byte) {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	if rv.seen[rv.label] == nil {
		rv.seen[rv.label] = map[string]bool{}
	}
	rv.seen[rv.label][fmt.Sprintf("%s v%d", kmsg.NameForKey(h.Key), h.Version)] = true
}

// of lists the requests seen under label, sorted.
func (rv *requestVersions) of(label string) string {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	return strings.Join(slices.Sorted(maps.Keys(rv.seen[label])), ", ")
}
