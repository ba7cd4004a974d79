package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/aggregator"
	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/sqsserver"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/protocols/kafka"
)

// scrapeMetrics GETs url and parses it with Prometheus's own text parser, under the classic
// (legacy) name rules every scraper accepts.
func scrapeMetrics(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != metricsContentType {
		t.Errorf("Content-Type %q, want %q", ct, metricsContentType)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: Prometheus's parser refuses it: %v", url, err)
	}
	return fams
}

// metricValue is the value of the first series of family whose labels include want.
func metricValue(fams map[string]*dto.MetricFamily, family string, want map[string]string) (float64, bool) {
	f := fams[family]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if k == "quantile" && f.GetType() == dto.MetricType_SUMMARY {
				continue // the parser keeps it with the value, below
			}
			if got[k] != v {
				continue next
			}
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue(), true
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue(), true
		case dto.MetricType_SUMMARY:
			for _, q := range m.GetSummary().GetQuantile() {
				if strconv.FormatFloat(q.GetQuantile(), 'g', -1, 64) == want["quantile"] {
					return q.GetValue(), true
				}
			}
			continue
		default:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

type fakeFrontStats struct {
	InjectedRecords uint64
	UnknownCorrIDs  uint64
	OpenThings      int
	Listed          bool
	hidden          uint64
}

// TestMetricsPage: names from clients with quotes, backslashes, line breaks and invalid UTF-8
// still give a page Prometheus parses; each family has its type; values are those /dsm and
// /stats show.
func TestMetricsPage(t *testing.T) {
	v := &localView{}
	hostile := "svc\"with\\odd\nname\xff"
	now := time.Now().Truncate(10 * time.Second)
	edge := []string{"direction:in", "group:g\"1", "topic:orders", "type:kafka"}
	if err := v.Send(context.Background(), []aggregator.Bucket{{
		Start: now.Add(-10 * time.Second), Duration: 10 * time.Second, TimestampType: aggregator.Current,
		Groups: []aggregator.Group{
			{Service: hostile, EdgeTags: edge, Hash: 0xab, ParentHash: 0xcd,
				PathwayLatency: sketchOf(t, 2, 2, 2, 2), EdgeLatency: sketchOf(t, 0.5, 0.5, 0.5, 0.5), PayloadSize: sketchOf(t, 100, 300, 100, 300), PayloadBytes: 800},
		},
		Backlogs: []aggregator.Backlog{
			{Service: "ledger", Tags: []string{"partition:0", "topic:orders", "type:kafka_high_watermark"}, Value: 10},
			{Service: "ledger", Tags: []string{"consumer_group:g1", "partition:0", "topic:orders", "type:kafka_commit"}, Value: 4},
		},
	}}); err != nil {
		t.Fatal(err)
	}
	v.errs = func() *errtrack.Snapshot {
		return &errtrack.Snapshot{Groups: []errtrack.Group{{
			Fingerprint: errtrack.Fingerprint{Category: errtrack.BrokerError, Protocol: "kafka", Service: hostile, Operation: "produce",
				Edge: pathway.Edge{Direction: pathway.Out, Topic: "orders", Type: "kafka"}, Name: "NOT_LEADER_OR_FOLLOWER", Code: 6},
			TotalCount: 3, TotalMessages: 300,
		}}, TracesDropped: 4, Overflow: 12, OverflowLost: 1200, Evicted: 7}
	}
	page := &metricsPage{view: v, stats: func() statsSnapshot {
		return statsSnapshot{
			Fronts: []frontStats{
				{Protocol: "kafka", Listen: ":9092", Stats: fakeFrontStats{InjectedRecords: 7, UnknownCorrIDs: 1, OpenThings: 2, Listed: true, hidden: 9},
					Listeners: []kafka.ListenerConnections{{Listen: "127.0.0.1:9092", Node: -1, Open: 1}, {Listen: "127.0.0.1:9093", Node: 0, Open: 4}}},
				{Protocol: "kafka", Listen: ":9192", Stats: fakeFrontStats{InjectedRecords: 5}},
			},
			Aggregator:   aggregator.Stats{Points: 11, OpenBuckets: 3},
			Checkpointer: checkpointerStats{CacheResets: 2},
		}
	}}
	srv := httptest.NewServer(page)
	defer srv.Close()
	fams := scrapeMetrics(t, srv.URL)

	cleaned := "svc\"with\\odd\nname\uFFFDff" // the invalid byte shown as U+FFFD and its hex
	for _, c := range []struct {
		family string
		typ    dto.MetricType
		labels map[string]string
		want   float64
	}{
		{"dsmproxy_pathway_messages_per_second", dto.MetricType_GAUGE, map[string]string{"service": cleaned,
			"edge_tags": strings.Join(edge, ","), "hash": "00000000000000ab", "parent_hash": "00000000000000cd"}, 0.4},
		{"dsmproxy_pathway_latency_seconds", dto.MetricType_SUMMARY, map[string]string{"quantile": "0.99"}, 2},
		{"dsmproxy_pathway_edge_latency_seconds", dto.MetricType_SUMMARY, map[string]string{"quantile": "0.5"}, 0.5},
		{"dsmproxy_pathway_payload_bytes_average", dto.MetricType_GAUGE, nil, 200},
		{"dsmproxy_pathway_messages_total", dto.MetricType_COUNTER, map[string]string{"service": cleaned,
			"edge_tags": strings.Join(edge, ","), "hash": "00000000000000ab", "parent_hash": "00000000000000cd"}, 4},
		{"dsmproxy_pathway_payload_bytes_total", dto.MetricType_COUNTER, nil, 800},
		{"dsmproxy_kafka_offset", dto.MetricType_GAUGE, map[string]string{"service": "ledger", "type": "kafka_commit", "consumer_group": "g1", "partition": "0"}, 4},
		{"dsmproxy_kafka_consumer_lag_messages", dto.MetricType_GAUGE, map[string]string{"consumer_group": "g1", "topic": "orders"}, 6},
		{"dsmproxy_tracked_errors_total", dto.MetricType_COUNTER, map[string]string{"category": "broker_error", "protocol": "kafka", "operation": "produce", "service": cleaned, "error": "NOT_LEADER_OR_FOLLOWER", "code": "6",
			"edge_tags": "direction:out,topic:orders,type:kafka"}, 3},
		{"dsmproxy_tracked_error_messages_total", dto.MetricType_COUNTER, nil, 300},
		{"dsmproxy_error_traces_dropped_total", dto.MetricType_COUNTER, nil, 4},
		{"dsmproxy_tracked_errors_overflow_total", dto.MetricType_COUNTER, nil, 12},
		{"dsmproxy_tracked_errors_overflow_messages_total", dto.MetricType_COUNTER, nil, 1200},
		{"dsmproxy_tracked_errors_evicted_total", dto.MetricType_COUNTER, nil, 7},
		{"dsmproxy_kafka_injected_records_total", dto.MetricType_COUNTER, map[string]string{"listen": ":9092"}, 7},
		{"dsmproxy_kafka_injected_records_total", dto.MetricType_COUNTER, map[string]string{"listen": ":9192"}, 5},
		{"dsmproxy_kafka_unknown_corr_ids_total", dto.MetricType_COUNTER, map[string]string{"listen": ":9092"}, 1},
		{"dsmproxy_kafka_open_things", dto.MetricType_GAUGE, map[string]string{"listen": ":9092"}, 2},
		{"dsmproxy_kafka_listed", dto.MetricType_GAUGE, map[string]string{"listen": ":9092"}, 1},
		{"dsmproxy_kafka_listener_open_connections", dto.MetricType_GAUGE, map[string]string{"listen": ":9092", "listener": "127.0.0.1:9092", "node": "bootstrap"}, 1},
		{"dsmproxy_kafka_listener_open_connections", dto.MetricType_GAUGE, map[string]string{"listen": ":9092", "listener": "127.0.0.1:9093", "node": "0"}, 4},
		{"dsmproxy_aggregator_points_total", dto.MetricType_COUNTER, nil, 11},
		{"dsmproxy_aggregator_open_buckets", dto.MetricType_GAUGE, nil, 3},
		{"dsmproxy_checkpointer_cache_resets_total", dto.MetricType_COUNTER, nil, 2},
	} {
		got, ok := metricValue(fams, c.family, c.labels)
		if !ok {
			t.Errorf("%s%v: no such series", c.family, c.labels)
			continue
		}
		if typ := fams[c.family].GetType(); typ != c.typ {
			t.Errorf("%s is a %v, want %v", c.family, typ, c.typ)
		}
		if math.Abs(got-c.want) > 0.02*math.Abs(c.want) { // sketches are 1% accurate
			t.Errorf("%s%v = %v, want %v", c.family, c.labels, got, c.want)
		}
	}
	for name := range fams {
		if strings.Contains(name, "hidden") {
			t.Errorf("unexported field exported as %s", name)
		}
	}
	if _, ok := fams["dsmproxy_agent_pending"]; ok {
		t.Errorf("agent metrics without an Agent")
	}
}

func TestSnakeCase(t *testing.T) {
	for in, want := range map[string]string{
		"InjectedRecords": "injected_records", "UnknownCorrIDs": "unknown_corr_ids", "Points": "points",
		"SkippedFrameMax": "skipped_frame_max", "HTTPErrors": "http_errors", "Pending": "pending",
	} {
		if got := snakeCase(in); got != want {
			t.Errorf("snakeCase(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOpenConnectionsGauge: each front's open_connections gauge follows real clients through it
// (amqp091-go to RabbitMQ, kgo to kfake, the SQS SDK to goaws): up while they are connected,
// back to 0 once they close. A Kafka front also has one series per listener, summing to its gauge.
func TestOpenConnectionsGauge(t *testing.T) {
	_, metricsURL, front := startThreeFronts(t, nil)
	// waitOpen scrapes until the front's gauge is want: connections are counted and forgotten by
	// the proxy's goroutines, after the client's call returns.
	waitOpen := func(t *testing.T, protocol string, want float64) map[string]*dto.MetricFamily {
		t.Helper()
		family := "dsmproxy_" + protocol + "_open_connections"
		var got float64
		var found bool
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			fams := scrapeMetrics(t, metricsURL)
			if got, found = metricValue(fams, family, map[string]string{"listen": front[protocol]}); found && got == want {
				if typ := fams[family].GetType(); typ != dto.MetricType_GAUGE {
					t.Errorf("%s is a %v, want a gauge", family, typ)
				}
				return fams
			}
		}
		t.Fatalf("%s = %v (found: %v), want %v", family, got, found, want)
		return nil
	}

	t.Run("amqp", func(t *testing.T) {
		const n = 3
		var conns []*amqp091.Connection
		for range n {
			c, err := amqp091.Dial("amqp://guest:guest@" + front["amqp"] + "/")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			conns = append(conns, c)
		}
		waitOpen(t, "amqp", n)
		for _, c := range conns {
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
		}
		waitOpen(t, "amqp", 0)
	})

	t.Run("kafka", func(t *testing.T) {
		// kgo connects to the bootstrap listener, then to the node listener Metadata names; no
		// idle reaping while the test looks.
		cl, err := kgo.NewClient(kgo.SeedBrokers(front["kafka"]), kgo.AllowAutoTopicCreation(), kgo.ConnIdleTimeout(15*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "conns", Value: []byte("v")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		// The gauge and the listener series come from one scrape but two reads: poll until they
		// agree, with the produce's node listener holding a connection.
		var total, sum, node0 float64
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			fams := scrapeMetrics(t, metricsURL)
			total, _ = metricValue(fams, "dsmproxy_kafka_open_connections", map[string]string{"listen": front["kafka"]})
			sum, node0 = 0, 0
			for _, m := range fams["dsmproxy_kafka_listener_open_connections"].GetMetric() {
				sum += m.GetGauge().GetValue()
				for _, l := range m.GetLabel() {
					if l.GetName() == "node" && l.GetValue() == "0" {
						node0 = m.GetGauge().GetValue()
					}
				}
			}
			if total > 0 && total == sum && node0 > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("open_connections %v, sum of the listener series %v, node 0's %v: want them equal, node 0's above 0", total, sum, node0)
			}
		}
		cl.Close()
		fams := waitOpen(t, "kafka", 0)
		for _, m := range fams["dsmproxy_kafka_listener_open_connections"].GetMetric() {
			if v := m.GetGauge().GetValue(); v != 0 {
				t.Errorf("a listener still has %v open connections after the client closed: %v", v, m.GetLabel())
			}
		}
	})

	t.Run("aws", func(t *testing.T) {
		// Connections the test holds itself: SDK clients' keep-alive connections once showed one
		// of two under load, with none closed (cause not found; see the commit).
		const n = 2
		var conns []net.Conn
		for range n {
			c, err := net.Dial("tcp", front["aws"])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			conns = append(conns, c)
		}
		waitOpen(t, "aws", n)
		for _, c := range conns {
			c.Close()
		}
		waitOpen(t, "aws", 0)
	})
}

// TestPathwayMessagesTotal: exactly 37 messages through each front (kgo to kfake, produced and
// fetched; amqp091-go to RabbitMQ; the SQS SDK to goaws, singly and in batches), sent in two runs
// with a flushed bucket between them, give 37 on dsmproxy_pathway_messages_total, and still 37
// once every bucket is flushed: each message counted once, whichever bucket it fell in. Buckets
// are 1 s wide (agent.flush_interval at its least), so the 37 span several.
func TestPathwayMessagesTotal(t *testing.T) {
	rt, metricsURL, front := startThreeFronts(t, func(cfg *Config) { cfg.Agent.FlushInterval = Duration(time.Second) })
	const n, firstRun = 37, 20
	body := func(i int) []byte { return fmt.Appendf(nil, "message-%02d", i) } // 10 bytes
	const bodySize = 10

	// counted sums the counters of the pathways whose edge has every tag of edge (a front's
	// messages may go several pathways: other services or parents).
	counted := func(t *testing.T, fams map[string]*dto.MetricFamily, edge ...string) (msgs, bytes float64) {
		for family, sum := range map[string]*float64{"dsmproxy_pathway_messages_total": &msgs, "dsmproxy_pathway_payload_bytes_total": &bytes} {
			f := fams[family]
			if f != nil && f.GetType() != dto.MetricType_COUNTER {
				t.Errorf("%s is a %v, want a counter", family, f.GetType())
			}
		series:
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() != "edge_tags" {
						continue
					}
					for _, tag := range edge {
						if !slices.Contains(strings.Split(l.GetValue(), ","), tag) {
							continue series
						}
					}
					*sum += m.GetCounter().GetValue()
				}
			}
		}
		return msgs, bytes
	}
	// waitCounted scrapes until the pathways of edge count want messages; flushes come every second.
	waitCounted := func(t *testing.T, want float64, edge ...string) {
		t.Helper()
		var got float64
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if got, _ = counted(t, scrapeMetrics(t, metricsURL), edge...); got >= want {
				break
			}
		}
		if got != want {
			t.Fatalf("dsmproxy_pathway_messages_total{edge_tags ⊇ %v} = %v, want %v", edge, got, want)
		}
	}
	// settled flushes every bucket, open ones too, and returns the counts then: nothing is left to
	// add to them.
	settled := func(t *testing.T, edge ...string) (msgs, bytes float64) {
		t.Helper()
		rt.flusher.FlushNow(context.Background(), true)
		return counted(t, scrapeMetrics(t, metricsURL), edge...)
	}

	t.Run("kafka", func(t *testing.T) {
		const topic = "counted"
		cl, err := kgo.NewClient(kgo.SeedBrokers(front["kafka"]), kgo.AllowAutoTopicCreation(), kgo.DefaultProduceTopic(topic),
			kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		produce := func(from, to int) {
			t.Helper()
			var rs []*kgo.Record
			for i := from; i < to; i++ {
				rs = append(rs, &kgo.Record{Value: body(i)})
			}
			if err := cl.ProduceSync(ctx, rs...).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		out := []string{"direction:out", "topic:" + topic, "type:kafka"}
		produce(0, firstRun)
		waitCounted(t, firstRun, out...) // a bucket with the first run is flushed
		produce(firstRun, n)
		waitCounted(t, n, out...)
		for got := 0; got < n; {
			fs := cl.PollFetches(ctx)
			if err := fs.Err0(); err != nil {
				t.Fatal(err)
			}
			got += fs.NumRecords()
		}
		in := []string{"direction:in", "topic:" + topic, "type:kafka"}
		waitCounted(t, n, in...)
		if msgs, bytes := settled(t, out...); msgs != n || bytes != n*bodySize {
			t.Errorf("produced: %v messages, %v bytes counted; want %d, %d (values alone: no key, no header)", msgs, bytes, n, n*bodySize)
		}
		if msgs, bytes := settled(t, in...); msgs != n || bytes < n*bodySize {
			t.Errorf("fetched: %v messages, %v bytes counted; want %d, %d bytes at least", msgs, bytes, n, n*bodySize)
		}
	})

	t.Run("amqp", func(t *testing.T) {
		c, err := amqp091.Dial("amqp://guest:guest@" + front["amqp"] + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ch, err := c.Channel()
		if err != nil {
			t.Fatal(err)
		}
		q, err := ch.QueueDeclare("", false, true, true, false, nil) // server-named, gone with the connection
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		publish := func(from, to int) {
			t.Helper()
			for i := from; i < to; i++ {
				dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q.Name, true, false, amqp091.Publishing{Body: body(i)})
				if err != nil {
					t.Fatal(err)
				}
				if ok, err := dc.WaitContext(context.Background()); !ok || err != nil {
					t.Fatalf("publish %d: acked %v, %v", i, ok, err)
				}
			}
		}
		out := []string{"direction:out", "type:rabbitmq"}
		publish(0, firstRun)
		waitCounted(t, firstRun, out...)
		publish(firstRun, n)
		waitCounted(t, n, out...)
		if msgs, bytes := settled(t, out...); msgs != n || bytes < n*bodySize {
			t.Errorf("published: %v messages, %v bytes counted; want %d, %d bytes at least", msgs, bytes, n, n*bodySize)
		}
	})

	t.Run("sqs", func(t *testing.T) {
		cl := sqs.NewFromConfig(awssdk.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("client", "client", "")},
			func(o *sqs.Options) { o.BaseEndpoint = awssdk.String("http://" + front["aws"]) })
		ctx := context.Background()
		const queue = "counted"
		cq, err := cl.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: awssdk.String(queue)})
		if err != nil {
			t.Fatal(err)
		}
		// send: ten in one SendMessageBatch, the rest one by one.
		send := func(from, to int) {
			t.Helper()
			var entries []sqstypes.SendMessageBatchRequestEntry
			for i := from; i < from+10; i++ {
				entries = append(entries, sqstypes.SendMessageBatchRequestEntry{Id: awssdk.String(strconv.Itoa(i)), MessageBody: awssdk.String(string(body(i)))})
			}
			out, err := cl.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: cq.QueueUrl, Entries: entries})
			if err != nil {
				t.Fatal(err)
			}
			if len(out.Successful) != 10 {
				t.Fatalf("SendMessageBatch: %d sent, %d failed", len(out.Successful), len(out.Failed))
			}
			for i := from + 10; i < to; i++ {
				if _, err := cl.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: cq.QueueUrl, MessageBody: awssdk.String(string(body(i)))}); err != nil {
					t.Fatal(err)
				}
			}
		}
		out := []string{"direction:out", "topic:" + queue, "type:sqs"}
		send(0, firstRun)
		waitCounted(t, firstRun, out...)
		send(firstRun, n)
		waitCounted(t, n, out...)
		if msgs, bytes := settled(t, out...); msgs != n || bytes < n*bodySize {
			t.Errorf("sent: %v messages, %v bytes counted; want %d, %d bytes at least", msgs, bytes, n, n*bodySize)
		}
	})
}

// startThreeFronts runs a proxy with a front of each protocol, before the local RabbitMQ, a kfake
// cluster and goaws, its Agent off (mod may change the config first). It returns the proxy, its
// /metrics address and the fronts' addresses by protocol; all of it stops when the test ends.
func startThreeFronts(t *testing.T, mod func(*Config)) (*runtime, string, map[string]string) {
	t.Helper()
	if !answers("127.0.0.1:5672") {
		t.Fatal("RabbitMQ does not answer on 127.0.0.1:5672: start it with `rabbitmq-server -detached`")
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	sqsSrv, err := sqsserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sqsSrv.Close() })
	cfg := &Config{
		Admin: AdminConfig{Listen: "127.0.0.1:0"},
		AMQP:  []AMQPConfig{{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:5672"}},
		Kafka: []KafkaConfig{{Listen: "127.0.0.1:0", Bootstrap: cluster.ListenAddrs()}},
		AWS: []AWSConfig{{Listen: "127.0.0.1:0", Upstream: sqsSrv.URL(), TrustClients: true,
			credentials: credentials.NewStaticCredentialsProvider("proxy", "proxy", "")}},
	}
	cfg.Agent.Disabled = true
	if mod != nil {
		mod(cfg)
	}
	rt := startRuntime(t, cfg)
	front := map[string]string{}
	for _, f := range rt.fronts {
		front[f.protocol] = f.Addr().String()
	}
	return rt, "http://" + rt.adminLn.Addr().String() + "/metrics", front
}

// TestFrontLabelsNameBoundAddress: two fronts on port 0 are told apart by the address each is
// bound to, in /metrics (label listen), /stats and /readyz: their listen setting, the same for
// both, would make one series of two fronts.
func TestFrontLabelsNameBoundAddress(t *testing.T) {
	// Nothing dials an AMQP front's upstream until a client connects; port 9 (discard) answers
	// nothing either way.
	cfg := &Config{
		Admin: AdminConfig{Listen: "127.0.0.1:0"},
		AMQP: []AMQPConfig{{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:9"},
			{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:9"}},
	}
	cfg.Agent.Disabled = true
	rt := startRuntime(t, cfg)
	var want []string
	for _, f := range rt.fronts {
		want = append(want, f.Addr().String())
	}
	slices.Sort(want)
	base := "http://" + rt.adminLn.Addr().String()

	var metrics []string
	for _, m := range scrapeMetrics(t, base+"/metrics")["dsmproxy_amqp_open_connections"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "listen" {
				metrics = append(metrics, l.GetValue())
			}
		}
	}
	var stats statsSnapshot
	var ready struct {
		Fronts []frontStatus `json:"fronts"`
	}
	for path, v := range map[string]any{"/stats": &stats, "/readyz": &ready} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(v)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	var fromStats, fromReady, keysStats, keysReady []string
	for _, f := range stats.Fronts {
		fromStats = append(fromStats, f.Listen)
		keysStats = append(keysStats, f.Front)
	}
	for _, f := range ready.Fronts {
		fromReady = append(fromReady, f.Listen)
		keysReady = append(keysReady, f.Front)
	}
	// And each names its config entry, as every log line of the front does.
	for page, keys := range map[string][]string{"/stats": keysStats, "/readyz": keysReady} {
		if slices.Sort(keys); !slices.Equal(keys, []string{"amqp[0]", "amqp[1]"}) {
			t.Errorf("%s fronts named %q, want amqp[0] and amqp[1]", page, keys)
		}
	}
	for _, tc := range []struct {
		page string
		got  []string
	}{{"/metrics listen label", metrics}, {"/stats listen", fromStats}, {"/readyz listen", fromReady}} {
		slices.Sort(tc.got)
		if !slices.Equal(tc.got, want) {
			t.Errorf("%s: %q, want the bound addresses %q", tc.page, tc.got, want)
		}
	}
}

// TestLabelValuesKeepNamesApart: names with invalid UTF-8 (a Kafka topic or client.id is bytes)
// give valid label values, and two different names never the same value: Prometheus would
// take their series for one.
func TestLabelValuesKeepNamesApart(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"t\xff", "t\xfe"},
		{"t\xff", "t\xff\xff"},
		{"t\xff\xfe", "t\xfe\xff"},
		{"t\xff", "t\uFFFD"},
		{"t\xff", "t\uFFFDff"},
		{"t\uFFFD", "t\uFFFD\uFFFD"},
		{"t\xe2\x82", "t\xe2"}, // a rune cut short, and shorter
		{"t\xff", "t"},
		{"t\\xff", "t\xff"},
	} {
		a, b := escapeLabel(tc.a), escapeLabel(tc.b)
		if a == b {
			t.Errorf("%q and %q both give the label value %q", tc.a, tc.b, a)
		}
		for _, v := range []string{a, b} {
			if !utf8.ValidString(v) {
				t.Errorf("label value %q is not valid UTF-8", v)
			}
		}
	}
	for _, s := range []string{"orders", "Bestellungen-ä", "日本"} { // valid names stay as they are
		if escapeLabel(s) != s {
			t.Errorf("valid name %q changed to %q", s, escapeLabel(s))
		}
	}

	// On the page: two topics that differ only in invalid bytes are two series, and Prometheus's
	// own parser reads the page.
	v := &localView{}
	now := time.Now().Truncate(10 * time.Second)
	if err := v.Send(context.Background(), []aggregator.Bucket{{
		Start: now.Add(-10 * time.Second), Duration: 10 * time.Second, TimestampType: aggregator.Current,
		Backlogs: []aggregator.Backlog{
			{Service: "s", Tags: []string{"partition:0", "topic:t\xff", "type:kafka_high_watermark"}, Value: 1},
			{Service: "s", Tags: []string{"partition:0", "topic:t\xfe", "type:kafka_high_watermark"}, Value: 2},
		},
	}}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(&metricsPage{view: v})
	defer srv.Close()
	topics := map[string]float64{}
	for _, m := range scrapeMetrics(t, srv.URL)["dsmproxy_kafka_offset"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "topic" {
				topics[l.GetValue()] = m.GetGauge().GetValue()
			}
		}
	}
	if len(topics) != 2 {
		t.Errorf("dsmproxy_kafka_offset topics %v: want two, one per topic", topics)
	}
}

// boundFront is a front bound to addr.
type boundFront struct {
	stubFront
	addr net.Addr
}

func (f boundFront) Addr() net.Addr { return f.addr }

// TestBoundKeepsTheSetting: a front's name is its listen setting as written, port 0 replaced by
// the port it got, so labels match the configuration (Go names a wildcard listener [::]).
func TestBoundKeepsTheSetting(t *testing.T) {
	wild := &net.TCPAddr{IP: net.IPv6unspecified, Port: 19092}
	for _, tc := range []struct {
		listen string
		addr   net.Addr
		want   string
	}{
		{"0.0.0.0:19092", wild, "0.0.0.0:19092"},
		{":19092", wild, ":19092"},
		{"localhost:19092", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 19092}, "localhost:19092"},
		{"127.0.0.1:0", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 38973}, "127.0.0.1:38973"},
		{":0", &net.TCPAddr{IP: net.IPv6unspecified, Port: 40001}, ":40001"},
		{"127.0.0.1:0", nil, "127.0.0.1:0"}, // not started
	} {
		f := namedFront{front: boundFront{addr: tc.addr}, listen: tc.listen}
		if got := f.bound(); got != tc.want {
			t.Errorf("listen %q bound at %v: named %q, want %q", tc.listen, tc.addr, got, tc.want)
		}
	}
}

// TestEdgeTagsKeepEdgesApart: error series carry no pathway hash, so their edge_tags label alone
// tells edges apart. A consumer group or RabbitMQ name may hold a comma: joined as they are,
// a group-level error of group "g,topic:t" (no topic) and a partition error of group "g" on topic
// t (the cluster id unknown to the proxy: clients that send Metadata v0/v1) read as one series.
func TestEdgeTagsKeepEdgesApart(t *testing.T) {
	fp := func(e pathway.Edge) errtrack.Group {
		return errtrack.Group{Fingerprint: errtrack.Fingerprint{Category: errtrack.BrokerError, Protocol: "kafka", Service: "s",
			Operation: "OffsetCommit", Edge: e, Name: "GROUP_AUTHORIZATION_FAILED", Code: 30}, TotalCount: 1}
	}
	for _, pair := range [][2]pathway.Edge{
		{{Direction: pathway.In, Type: "kafka", Group: "g,topic:t"}, {Direction: pathway.In, Type: "kafka", Group: "g", Topic: "t"}},
		{{Direction: pathway.In, Type: "kafka", Group: `g\,topic:t`}, {Direction: pathway.In, Type: "kafka", Group: `g\`, Topic: "t"}},
	} {
		v := &localView{errs: func() *errtrack.Snapshot {
			return &errtrack.Snapshot{Groups: []errtrack.Group{fp(pair[0]), fp(pair[1])}}
		}}
		srv := httptest.NewServer(&metricsPage{view: v})
		labels := map[string]bool{}
		for _, m := range scrapeMetrics(t, srv.URL)["dsmproxy_tracked_errors_total"].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "edge_tags" {
					labels[l.GetValue()] = true
				}
			}
		}
		srv.Close()
		if len(labels) != 2 {
			t.Errorf("edges %v and %v: edge_tags %q, want two values", pair[0].Tags(), pair[1].Tags(), slices.Collect(maps.Keys(labels)))
		}
	}
	// Tags without a comma or backslash keep the value they always had.
	if got, want := edgeTagsLabel([]string{"direction:out", "exchange:ex.1", "has_routing_key:true", "type:rabbitmq"}),
		"direction:out,exchange:ex.1,has_routing_key:true,type:rabbitmq"; got != want {
		t.Errorf("edge_tags %q, want %q", got, want)
	}
	if got, want := edgeTagsLabel([]string{"direction:in", `group:a\b,c`, "type:kafka"}), `direction:in,group:a\\b\,c,type:kafka`; got != want {
		t.Errorf("edge_tags %q, want %q", got, want)
	}
}

// TestAverageSizeExact: /dsm's AVG SIZE and dsmproxy_pathway_payload_bytes_average are the
// bucket's exact bytes over its checkpoints, as dsmproxy_pathway_payload_bytes_total is. They
// were the size sketch's sum, only within 1%: one 99900-byte record showed as 100082 B beside a
// payload_bytes_total of 99900.
func TestAverageSizeExact(t *testing.T) {
	v := &localView{}
	edge := []string{"direction:in", "topic:big", "type:kafka"}
	now := time.Now().Truncate(10 * time.Second)
	if err := v.Send(context.Background(), []aggregator.Bucket{{
		Start: now.Add(-10 * time.Second), Duration: 10 * time.Second, TimestampType: aggregator.Current,
		Groups: []aggregator.Group{{Service: "loader", EdgeTags: edge, Hash: 0x1,
			PathwayLatency: sketchOf(t, 0.1), EdgeLatency: sketchOf(t, 0.1), PayloadSize: sketchOf(t, 99900), PayloadBytes: 99900}},
	}}); err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	v.ServeHTTP(w, httptest.NewRequest("GET", "/dsm", nil))
	if page := w.Body.String(); !strings.Contains(page, " 99900 B\n") {
		t.Errorf("/dsm does not show AVG SIZE 99900 B:\n%s", page)
	}
	srv := httptest.NewServer(&metricsPage{view: v, stats: func() statsSnapshot { return statsSnapshot{} }})
	defer srv.Close()
	if got, ok := metricValue(scrapeMetrics(t, srv.URL), "dsmproxy_pathway_payload_bytes_average", nil); !ok || got != 99900 {
		t.Errorf("dsmproxy_pathway_payload_bytes_average = %v (found %v), want 99900", got, ok)
	}
}
