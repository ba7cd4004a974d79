package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/aggregator"
	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/agenttest"
	"github.com/dsmproxy/dsmproxy/pathway"
)

func sketchOf(t testing.TB, vs ...float64) *ddsketch.DDSketch {
	t.Helper()
	s, err := ddsketch.NewDefaultDDSketch(0.01)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		s.Add(v)
	}
	return s
}

// TestLocalView: /dsm keeps each pathway from its latest bucket while later flushes bring other
// buckets (origin-time ones, backlogs only, nothing), and forgets pathways older than the window.
func TestLocalView(t *testing.T) {
	v := &localView{}
	group := func(service string, hash uint64) aggregator.Group {
		return aggregator.Group{Service: service, EdgeTags: []string{"direction:out", "topic:orders", "type:kafka"}, Hash: hash,
			PathwayLatency: sketchOf(t, 0.5), EdgeLatency: sketchOf(t, 0.1), PayloadSize: sketchOf(t, 100)}
	}
	now := time.Now().Truncate(10 * time.Second)
	send := func(bs ...aggregator.Bucket) {
		t.Helper()
		if err := v.Send(context.Background(), bs); err != nil {
			t.Fatal(err)
		}
	}
	page := func() string {
		w := httptest.NewRecorder()
		v.ServeHTTP(w, httptest.NewRequest("GET", "/dsm", nil))
		return strings.Join(strings.Fields(w.Body.String()), " ")
	}
	if got := page(); !strings.Contains(got, "No DSM checkpoints flushed yet") {
		t.Errorf("empty view: %s", got)
	}
	send(aggregator.Bucket{Start: now.Add(-10 * time.Second), Duration: 10 * time.Second, TimestampType: aggregator.Current,
		Groups: []aggregator.Group{group("orders", 0xaa)}})
	send(aggregator.Bucket{Start: now.Add(-10 * time.Second), Duration: 10 * time.Second, TimestampType: aggregator.Origin,
		Groups: []aggregator.Group{group("ghost", 0xbb)}},
		aggregator.Bucket{Start: now, Duration: 10 * time.Second, TimestampType: aggregator.Current,
			Backlogs: []aggregator.Backlog{{Service: "orders", Tags: []string{"partition:0", "topic:orders", "type:kafka_produce"}, Value: 7}}})
	send()
	got := page()
	if !strings.Contains(got, "orders direction:out topic:orders type:kafka 00000000000000aa") {
		t.Errorf("the pathway is gone after flushes without it: %s", got)
	}
	if strings.Contains(got, "ghost") {
		t.Errorf("an origin-time bucket is shown: %s", got)
	}
	send(aggregator.Bucket{Start: now.Add(-2 * localViewWindow), Duration: 10 * time.Second, TimestampType: aggregator.Current,
		Groups: []aggregator.Group{group("stale", 0xcc)}})
	if got := page(); strings.Contains(got, "stale") {
		t.Errorf("a pathway older than the window is shown: %s", got)
	}

	// 60-second buckets are flushed once over: their lag stays on show.
	w := &localView{}
	if err := w.Send(context.Background(), []aggregator.Bucket{{Start: now.Add(-70 * time.Second), Duration: time.Minute, TimestampType: aggregator.Current,
		Backlogs: []aggregator.Backlog{{Service: "ledger", Tags: []string{"partition:0", "topic:payments", "type:kafka_high_watermark"}, Value: 9}}}}); err != nil {
		t.Fatal(err)
	}
	if len(w.bl) != 1 {
		t.Errorf("the backlog of a 60 s bucket was dropped as it came")
	}
}

// TestLocalViewLag: lag comes from the last known offsets, not from the latest bucket's. A
// partition whose consumer stopped committing, or a group that stopped altogether, keeps its commit
// on show while the log end moves on, by fetches (high watermark) or by produces alone.
func TestLocalViewLag(t *testing.T) {
	now := time.Now().Truncate(10 * time.Second)
	inCluster := func(cluster, typ string, part int, value int64) aggregator.Backlog {
		tags := []string{fmt.Sprintf("partition:%d", part), "topic:orders", "type:" + typ}
		if typ == "kafka_commit" {
			tags = append([]string{"consumer_group:billing"}, tags...)
		}
		if cluster != "" {
			tags = append(tags, "kafka_cluster_id:"+cluster)
		}
		return aggregator.Backlog{Service: "billing", Tags: tags, Value: value}
	}
	bl := func(typ string, part int, value int64) aggregator.Backlog { return inCluster("", typ, part, value) }
	at := func(ago time.Duration, bls ...aggregator.Backlog) aggregator.Bucket {
		return aggregator.Bucket{Start: now.Add(-ago), Duration: 10 * time.Second, TimestampType: aggregator.Current, Backlogs: bls}
	}
	for _, tc := range []struct {
		name    string
		flushes []aggregator.Bucket
		want    string // the lag row, or "" for none
	}{
		{"only the moved partition committed last",
			[]aggregator.Bucket{
				at(10*time.Minute, bl("kafka_commit", 0, 55), bl("kafka_commit", 1, 15)),
				at(10*time.Second, bl("kafka_commit", 0, 60), bl("kafka_high_watermark", 0, 65), bl("kafka_high_watermark", 1, 25)),
			}, "billing orders 2 15"},
		{"stopped consumer, produces go on",
			[]aggregator.Bucket{
				at(time.Hour, bl("kafka_commit", 0, 30), bl("kafka_high_watermark", 0, 45)),
				at(10*time.Second, bl("kafka_produce", 0, 54)),
			}, "billing orders 1 25"},
		{"high watermark later than produces",
			[]aggregator.Bucket{at(10*time.Second, bl("kafka_commit", 0, 30), bl("kafka_produce", 0, 40), bl("kafka_high_watermark", 0, 45))},
			"billing orders 1 15"},
		{"one topic and group on two clusters",
			[]aggregator.Bucket{at(10*time.Second,
				inCluster("east", "kafka_commit", 0, 50), inCluster("east", "kafka_high_watermark", 0, 100),
				inCluster("west", "kafka_commit", 0, 5000), inCluster("west", "kafka_high_watermark", 0, 5000))},
			"billing orders 1 50 east billing orders 1 0 west"},
		{"offsets reset, then committed by another service",
			[]aggregator.Bucket{
				at(10*time.Minute, bl("kafka_commit", 0, 100)),
				at(10*time.Second, aggregator.Backlog{Service: "replay", Tags: []string{"consumer_group:billing", "partition:0", "topic:orders", "type:kafka_commit"}, Value: 10},
					bl("kafka_high_watermark", 0, 110)),
			}, "billing orders 1 100"},
		{"offsets reset within one bucket, by the consumer and by another service",
			[]aggregator.Bucket{at(10*time.Second,
				aggregator.Backlog{Service: "billing", Tags: []string{"consumer_group:billing", "partition:0", "topic:orders", "type:kafka_commit"},
					Value: 100, Last: 40, LastAt: now.Add(-8 * time.Second)},
				aggregator.Backlog{Service: "replay", Tags: []string{"consumer_group:billing", "partition:1", "topic:orders", "type:kafka_commit"},
					Value: 10, Last: 10, LastAt: now.Add(-5 * time.Second)},
				aggregator.Backlog{Service: "billing", Tags: []string{"consumer_group:billing", "partition:1", "topic:orders", "type:kafka_commit"},
					Value: 100, Last: 100, LastAt: now.Add(-7 * time.Second)},
				bl("kafka_high_watermark", 0, 110), bl("kafka_high_watermark", 1, 110)),
			}, "billing orders 2 170"},
		{"a week without an update",
			[]aggregator.Bucket{at(offsetRetention+time.Hour, bl("kafka_commit", 0, 30), bl("kafka_high_watermark", 0, 45))},
			""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := &localView{}
			for _, b := range tc.flushes {
				if err := v.Send(context.Background(), []aggregator.Bucket{b}); err != nil {
					t.Fatal(err)
				}
			}
			w := httptest.NewRecorder()
			v.ServeHTTP(w, httptest.NewRequest("GET", "/dsm", nil))
			page := strings.Join(strings.Fields(w.Body.String()), " ")
			switch {
			case tc.want == "" && strings.Contains(page, "CONSUMER GROUP"):
				t.Errorf("lag shown from offsets past their retention: %s", page)
			case tc.want != "" && !strings.Contains(page, "KAFKA CLUSTER "+tc.want):
				t.Errorf("want lag row %q: %s", tc.want, page)
			}
		})
	}
}

// TestLocalViewOffsetsBounded: past maxViewBacklogs offsets, the least recently updated go, down
// to nine tenths of the bound.
func TestLocalViewOffsetsBounded(t *testing.T) {
	v := &localView{}
	now := time.Now().Truncate(10 * time.Second)
	old := aggregator.Bucket{Start: now.Add(-time.Hour), Duration: 10 * time.Second, TimestampType: aggregator.Current,
		Backlogs: []aggregator.Backlog{{Service: "s", Tags: []string{"partition:0", "topic:old", "type:kafka_produce"}, Value: 1}}}
	fresh := aggregator.Bucket{Start: now, Duration: 10 * time.Second, TimestampType: aggregator.Current}
	for i := range maxViewBacklogs {
		fresh.Backlogs = append(fresh.Backlogs, aggregator.Backlog{Service: "s", Tags: []string{fmt.Sprintf("partition:%d", i), "topic:new", "type:kafka_produce"}, Value: 1})
	}
	if err := v.Send(context.Background(), []aggregator.Bucket{old, fresh}); err != nil {
		t.Fatal(err)
	}
	if bl := v.contents().bl; len(bl) != maxViewBacklogs*9/10 {
		t.Fatalf("%d offsets kept, want %d (a tenth of room made)", len(bl), maxViewBacklogs*9/10)
	}
	if _, ok := v.bl["s|partition:0,topic:old,type:kafka_produce"]; ok {
		t.Errorf("the least recently updated offset was kept over a newer one")
	}
}

// TestLocalViewAgent: /dsm ends with where the buckets go: no Agent, or the Agent's URL and how
// delivery went.
func TestLocalViewAgent(t *testing.T) {
	page := func(v *localView) string {
		w := httptest.NewRecorder()
		v.ServeHTTP(w, httptest.NewRequest("GET", "/dsm", nil))
		return strings.Join(strings.Fields(w.Body.String()), " ")
	}
	if got := page(&localView{}); !strings.Contains(got, "== Datadog Agent: none (agent.disabled)") {
		t.Errorf("view without an Agent: %s", got)
	}
	agent := agenttest.New(t)
	sink, err := aggregator.NewAgentSink(aggregator.AgentConfig{URL: agent.URL(), TracerVersion: "test", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	v := &localView{agent: sink}
	bucket := aggregator.Bucket{Start: time.Now().Truncate(10 * time.Second), Duration: 10 * time.Second, TimestampType: aggregator.Current,
		Groups: []aggregator.Group{{Service: "orders", EdgeTags: []string{"direction:out", "topic:orders", "type:kafka"}, Hash: 1,
			PathwayLatency: sketchOf(t, 0.5), EdgeLatency: sketchOf(t, 0.1), PayloadSize: sketchOf(t, 100)}}}
	if err := sink.Send(context.Background(), []aggregator.Bucket{bucket}); err != nil {
		t.Fatal(err)
	}
	got := page(v)
	for _, want := range []string{"== Datadog Agent " + agent.URL() + " ==", "payloads accepted 1 (", "waiting 0 (0 bytes)", "taken but not answered in time 0"} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in the view: %s", want, got)
		}
	}
	if strings.Contains(got, "does not list") {
		t.Errorf("an Agent that lists the endpoint reported as not listing it: %s", got)
	}
}

// TestPlainTextCells: names from clients and brokers cannot add rows or columns to /dsm's tables.
func TestPlainTextCells(t *testing.T) {
	c := errtrack.New(errtrack.Config{})
	c.Report(errtrack.Event{Category: errtrack.LostMessage, Protocol: "amqp", Operation: "Basic.Publish", Name: "NO_ROUTE",
		Service: "svc\tFAKE", Messages: 1, Partition: -1,
		Edge: pathway.Edge{Direction: pathway.Out, Type: pathway.TypeRabbitMQ, Topic: "orders\nlost\tforged row"}})
	s := c.Snapshot()
	var out strings.Builder
	printErrors(&out, &s)
	if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); len(lines) != 2 {
		t.Errorf("one group printed as %d lines:\n%s", len(lines)-1, out.String())
	}
}

// TestLocalViewTotals: a pathway's totals add up every current-time bucket flushed (one flushed
// late, after a newer one, too) and no origin-time one; /dsm shows the count beside the latest
// bucket's rate; a pathway that drops out of the view takes its totals with it, and one that
// comes back counts from 0 again.
func TestLocalViewTotals(t *testing.T) {
	v := &localView{}
	edge := []string{"direction:out", "topic:orders", "type:kafka"}
	group := func(n int) aggregator.Group {
		g := aggregator.Group{Service: "orders", EdgeTags: edge, Hash: 0xaa, PathwayLatency: sketchOf(t), EdgeLatency: sketchOf(t), PayloadSize: sketchOf(t)}
		for range n {
			g.PathwayLatency.Add(0.5)
			g.EdgeLatency.Add(0.1)
			g.PayloadSize.Add(100)
			g.PayloadBytes += 100
		}
		return g
	}
	bucket := func(start time.Time, typ aggregator.TimestampType, n int) aggregator.Bucket {
		return aggregator.Bucket{Start: start, Duration: 10 * time.Second, TimestampType: typ, Groups: []aggregator.Group{group(n)}}
	}
	send := func(bs ...aggregator.Bucket) {
		t.Helper()
		if err := v.Send(context.Background(), bs); err != nil {
			t.Fatal(err)
		}
	}
	key := pathwayKey("orders", edge, 0xaa, 0)
	total := func() (pathwayTotal, bool) {
		t.Helper()
		tot, ok := v.contents().totals[key]
		return tot, ok
	}
	now := time.Now().Truncate(10 * time.Second)
	send(bucket(now.Add(-30*time.Second), aggregator.Current, 20), bucket(now.Add(-30*time.Second), aggregator.Origin, 20))
	send(bucket(now.Add(-10*time.Second), aggregator.Current, 11), bucket(now.Add(-20*time.Second), aggregator.Origin, 11))
	send(bucket(now.Add(-20*time.Second), aggregator.Current, 6)) // flushed after a newer one
	if got, _ := total(); got != (pathwayTotal{Messages: 37, Bytes: 3700}) {
		t.Errorf("totals %+v, want 37 messages, 3700 bytes", got)
	}
	if pts := v.contents().pts; len(pts) != 1 || pts[0].Count() != 11 {
		t.Errorf("the view shows %+v: want one point, the latest bucket's (11 checkpoints)", pts)
	}
	w := httptest.NewRecorder()
	v.ServeHTTP(w, httptest.NewRequest("GET", "/dsm", nil))
	page := strings.Join(strings.Fields(w.Body.String()), " ")
	if !strings.Contains(page, "MSG/S MESSAGES* EDGE") || !strings.Contains(page, "<- 0000000000000000 1.1 37 ") ||
		!strings.Contains(page, "MESSAGES*: checkpoints on the pathway since the proxy started") {
		t.Errorf("/dsm does not show 37 messages beside the rate: %s", page)
	}

	// Gone over the window: the totals go with the pathway, and start again if it comes back.
	v.mu.Lock()
	p := v.pts[key]
	p.pt.Start = now.Add(-2 * localViewWindow) // as if its latest bucket were that old
	v.pts[key] = p
	v.mu.Unlock()
	send()
	if got, ok := total(); ok {
		t.Errorf("a pathway gone from the view kept its totals %+v", got)
	}
	send(bucket(now, aggregator.Current, 2))
	if got, _ := total(); got != (pathwayTotal{Messages: 2, Bytes: 200}) {
		t.Errorf("totals of a pathway back in the view %+v, want 2 messages, 200 bytes", got)
	}
}

// TestLocalViewLagCommittedOnly: a partition the group never committed (kgo commits none for a
// partition it read nothing from) adds nothing to the lag, and the table's header says its
// partitions are the committed ones: kadm's Lag, which counts such a partition from its start,
// showed 35 where /dsm showed 8 over "PARTITIONS 2" of a 3-partition topic.
func TestLocalViewLagCommittedOnly(t *testing.T) {
	now := time.Now().Truncate(10 * time.Second)
	bl := func(typ string, part int, value int64) aggregator.Backlog {
		tags := []string{fmt.Sprintf("partition:%d", part), "topic:orders", "type:" + typ}
		if typ == "kafka_commit" {
			tags = append([]string{"consumer_group:billing"}, tags...)
		}
		return aggregator.Backlog{Service: "billing", Tags: tags, Value: value}
	}
	v := &localView{}
	if err := v.Send(context.Background(), []aggregator.Bucket{{Start: now.Add(-10 * time.Second), Duration: 10 * time.Second,
		TimestampType: aggregator.Current, Backlogs: []aggregator.Backlog{
			bl("kafka_commit", 1, 20), bl("kafka_high_watermark", 1, 20),
			bl("kafka_commit", 2, 5), bl("kafka_high_watermark", 2, 13),
			bl("kafka_high_watermark", 0, 27), // never committed
		}}}); err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	v.ServeHTTP(w, httptest.NewRequest("GET", "/dsm", nil))
	page := strings.Join(strings.Fields(w.Body.String()), " ")
	if !strings.Contains(page, "CONSUMER GROUP TOPIC PARTITIONS COMMITTED LAG (messages past the last commit) KAFKA CLUSTER billing orders 2 8") {
		t.Errorf("want the lag of the 2 committed partitions, 8, under a header that says so: %s", page)
	}
}

// TestLocalViewLagWithoutPathways: a minute after the last checkpoint, lag (kept a week) is still
// on show; the pathway table then says it has none rather than printing a header with no rows.
func TestLocalViewLagWithoutPathways(t *testing.T) {
	v := &localView{}
	// 30 s buckets: the view keeps pathways for three of them, 1m30s, which the page must say.
	if err := v.Send(context.Background(), []aggregator.Bucket{{Start: time.Now().Add(-5 * time.Minute), Duration: 30 * time.Second,
		TimestampType: aggregator.Current, Backlogs: []aggregator.Backlog{
			{Service: "billing", Tags: []string{"consumer_group:billing", "partition:0", "topic:orders", "type:kafka_commit"}, Value: 4},
			{Service: "billing", Tags: []string{"partition:0", "topic:orders", "type:kafka_high_watermark"}, Value: 10},
		}}}); err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	v.ServeHTTP(w, httptest.NewRequest("GET", "/dsm", nil))
	page := w.Body.String()
	if strings.Contains(page, "BUCKET") || !strings.Contains(page, "pathways of the last 1m30s") || !strings.Contains(page, "No pathway had a checkpoint in that time") ||
		!strings.Contains(strings.Join(strings.Fields(page), " "), "KAFKA CLUSTER billing orders 1 6") {
		t.Errorf("want no pathway header, a line saying there is none, and the lag row:\n%s", page)
	}
}

// TestLocalViewForgetsGone: what a Kafka front says is gone leaves the view: offsets kept from
// before, those of the bucket the deletion fell in that were seen before it (flushed after it),
// and that bucket's highest log end, which may be the old topic's: its last one, seen after
// the deletion, counts. Another topic's and another group's offsets stay.
func TestLocalViewForgetsGone(t *testing.T) {
	now := time.Now().Truncate(10 * time.Second)
	v := &localView{}
	tags := func(typ, group, topic string) []string {
		tt := []string{"partition:0", "topic:" + topic, "type:" + typ, "kafka_cluster_id:c1"}
		if group != "" {
			tt = append([]string{"consumer_group:" + group}, tt...)
		}
		return tt
	}
	bl := func(typ, group, topic string, value, last int64, at time.Time) aggregator.Backlog {
		return aggregator.Backlog{Service: "svc", Tags: tags(typ, group, topic), Value: value, Last: last, LastAt: at}
	}
	send := func(start time.Time, bls ...aggregator.Backlog) {
		t.Helper()
		if err := v.Send(context.Background(), []aggregator.Bucket{{Start: start, Duration: 10 * time.Second,
			TimestampType: aggregator.Current, Backlogs: bls}}); err != nil {
			t.Fatal(err)
		}
	}
	// Before: orders read to 20 by billing and audit, 25 long; payments read by audit.
	send(now.Add(-30*time.Second),
		bl("kafka_commit", "billing", "orders", 20, 20, now.Add(-25*time.Second)),
		bl("kafka_commit", "audit", "orders", 20, 20, now.Add(-25*time.Second)),
		bl("kafka_high_watermark", "", "orders", 25, 25, now.Add(-25*time.Second)),
		bl("kafka_commit", "audit", "payments", 4, 4, now.Add(-25*time.Second)),
		bl("kafka_high_watermark", "", "payments", 9, 9, now.Add(-25*time.Second)))
	// orders is deleted and created again 5 s into the bucket of now-10s; the group ledger is deleted.
	deleted := now.Add(-5 * time.Second)
	v.offsetsGone(pathway.OffsetsGone{ClusterID: "c1", Topic: "orders", Partition: -1, Time: deleted.UnixNano()})
	v.offsetsGone(pathway.OffsetsGone{ClusterID: "c1", Group: "ledger", Partition: -1, Time: deleted.UnixNano()})
	// That bucket: the old topic's high watermark 25 seen before, 3 after; billing's commit of the
	// new topic, 3; ledger's commit seen before its deletion, flushed after.
	send(now.Add(-10*time.Second),
		bl("kafka_high_watermark", "", "orders", 25, 3, now.Add(-2*time.Second)),
		bl("kafka_commit", "billing", "orders", 20, 3, now.Add(-time.Second)),
		bl("kafka_commit", "ledger", "payments", 2, 2, now.Add(-8*time.Second)))
	page := func() string {
		w := httptest.NewRecorder()
		v.ServeHTTP(w, httptest.NewRequest("GET", "/dsm", nil))
		return strings.Join(strings.Fields(w.Body.String()), " ")
	}()
	for _, want := range []string{"billing orders 1 0 c1", "audit payments 1 5 c1"} {
		if !strings.Contains(page, want) {
			t.Errorf("want lag row %q: %s", want, page)
		}
	}
	for _, gone := range []string{"audit orders", "ledger"} {
		if strings.Contains(page, gone) {
			t.Errorf("%s is shown after its deletion: %s", gone, page)
		}
	}
}

// TestLocalViewPathwayOrder: /dsm reads as the pipeline it shows. With several pathways on show
// (the hops a proxy cannot link start pathways of their own: a RabbitMQ publish after a Kafka
// consume, an SQS send after a RabbitMQ consume; a traced producer's records continue its
// tracer's), each row comes right under its parent's row, indented one step more, and each
// pathway's rows stay together. Found with kafka-python, pika, amqp091-go and the AWS CLI through
// one proxy: rows were sorted by end-to-end latency alone, so every pathway's first hop came
// first and the hops of four pathways were interleaved below them.
func TestLocalViewPathwayOrder(t *testing.T) {
	cp := pathway.NewCheckpointer("prod", 0)
	start := time.Now().Truncate(10 * time.Second).Add(-10 * time.Second)
	type hop struct {
		service string
		edge    pathway.Edge
		after   time.Duration // since the pathway's start
	}
	kafka := func(dir pathway.Direction, topic, group string) pathway.Edge {
		return pathway.Edge{Direction: dir, Type: pathway.TypeKafka, Topic: topic, Group: group}
	}
	// A tracer's produce, upstream of the traced pathway: checkpointed by its tracer, not here.
	_, traced := cp.Checkpoint(pathway.Context{}, "traced-api", kafka(pathway.Out, "t4", ""), 0, start)
	pathways := []struct {
		parent pathway.Context
		hops   []hop
	}{
		{hops: []hop{{"orders-api", kafka(pathway.Out, "t1", ""), 0}, {"billing", kafka(pathway.In, "t1", "billing"), 500 * time.Millisecond},
			{"billing", kafka(pathway.Out, "t2", ""), 520 * time.Millisecond}, {"auditor", kafka(pathway.In, "t2", "auditor"), 7 * time.Second}}},
		{hops: []hop{{"billing", pathway.Edge{Direction: pathway.Out, Type: pathway.TypeRabbitMQ, Exchange: "ex", HasRoutingKey: pathway.RoutingKeyTrue}, 0},
			{"shipping", pathway.Edge{Direction: pathway.In, Type: pathway.TypeRabbitMQ, Topic: "q"}, 2 * time.Millisecond}}},
		{hops: []hop{{"shipping", pathway.Edge{Direction: pathway.Out, Type: pathway.TypeSQS, Topic: "sq"}, 0},
			{"receiver", pathway.Edge{Direction: pathway.In, Type: pathway.TypeSQS, Topic: "sq"}, 5 * time.Second}}},
		{parent: traced, hops: []hop{{"billing", kafka(pathway.In, "t4", "billing"), 2600 * time.Millisecond},
			{"billing", kafka(pathway.Out, "t5", ""), 2700 * time.Millisecond}, {"auditor", kafka(pathway.In, "t5", "auditor"), 3800 * time.Millisecond}}},
	}
	var groups []aggregator.Group
	var want []string
	for _, pw := range pathways {
		parent := pw.parent
		for depth, h := range pw.hops {
			pt, ctx := cp.Checkpoint(parent, h.service, h.edge, 10, start.Add(h.after))
			parent = ctx
			groups = append(groups, aggregator.Group{Service: pt.Service, EdgeTags: pt.EdgeTags, Hash: pt.Hash, ParentHash: pt.ParentHash,
				PathwayLatency: sketchOf(t, time.Duration(pt.PathwayLatency).Seconds()), EdgeLatency: sketchOf(t, time.Duration(pt.EdgeLatency).Seconds()),
				PayloadSize: sketchOf(t, 10), PayloadBytes: 10})
			want = append(want, strings.Repeat("  ", depth)+h.service+" "+strings.Join(pt.EdgeTags, " "))
		}
	}
	v := &localView{}
	if err := v.Send(context.Background(), []aggregator.Bucket{{Start: start, Duration: 10 * time.Second, TimestampType: aggregator.Current, Groups: groups}}); err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	v.ServeHTTP(w, httptest.NewRequest("GET", "/dsm", nil))
	var got []string
	for _, line := range strings.Split(w.Body.String(), "\n") {
		// BUCKET, then the service cell with its indent, then the edge tags up to the hashes.
		_, rest, ok := strings.Cut(line, start.Format(time.TimeOnly)+"  ")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		indent := rest[:len(rest)-len(strings.TrimLeft(rest, " "))]
		var edge []string
		for _, f := range fields[1:] {
			if !strings.Contains(f, ":") {
				break
			}
			edge = append(edge, f)
		}
		got = append(got, indent+fields[0]+" "+strings.Join(edge, " "))
	}
	wantOrder := []string{
		want[4], want[5], // billing's RabbitMQ publish, then its consumer
		want[0], want[1], want[2], want[3], // orders-api's pathway, hop by hop
		want[6], want[7], // shipping's SQS send, then its receiver
		want[8], want[9], want[10], // the traced pathway, last: its end-to-end latency is the longest of the first rows
	}
	if !slices.Equal(got, wantOrder) {
		t.Errorf("/dsm rows:\n%s\nwant:\n%s\npage:\n%s", strings.Join(got, "\n"), strings.Join(wantOrder, "\n"), w.Body.String())
	}
}

// TestLocalViewGoneOverflowWarns: deletions told between two flushes are bounded
// (maxGoneWaiting), and one past the bound is not applied: the lag of that group stays on show.
// The flush says so, with how many, rather than leaving a deleted group's growing lag
// unexplained.
func TestLocalViewGoneOverflowWarns(t *testing.T) {
	now := time.Now().Truncate(10 * time.Second)
	var logs strings.Builder
	v := &localView{log: zerolog.New(&logs)}
	commit := aggregator.Backlog{Service: "svc", Tags: []string{"consumer_group:last", "partition:0", "topic:t", "type:kafka_commit", "kafka_cluster_id:c1"},
		Value: 1, Last: 1, LastAt: now.Add(-25 * time.Second)}
	if err := v.Send(context.Background(), []aggregator.Bucket{{Start: now.Add(-30 * time.Second), Duration: 10 * time.Second,
		TimestampType: aggregator.Current, Backlogs: []aggregator.Backlog{commit}}}); err != nil {
		t.Fatal(err)
	}
	// A DeleteGroups of maxGoneWaiting names that have no offsets here, then of "last".
	deleted := now.Add(-5 * time.Second).UnixNano()
	for i := range maxGoneWaiting {
		v.offsetsGone(pathway.OffsetsGone{ClusterID: "c1", Group: fmt.Sprintf("g%d", i), Partition: -1, Time: deleted})
	}
	v.offsetsGone(pathway.OffsetsGone{ClusterID: "c1", Group: "last", Partition: -1, Time: deleted})
	if err := v.Send(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), `"level":"warn","deletions_not_applied":1,`) {
		t.Fatalf("no Warn line counting the deletion not applied; log: %q", logs.String())
	}
}
