package main

import (
	"context"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/dsmproxy/dsmproxy/aggregator"
	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/protocols/amqp"
	"github.com/dsmproxy/dsmproxy/protocols/aws"
	"github.com/dsmproxy/dsmproxy/protocols/kafka"
)

// fullMetricsPage is /metrics with every family it can hold: a pathway (with its latencies at
// their quantiles), Kafka offsets and lag, a tracked error, each front's counters and levels
// (the Kafka front's listeners too), the aggregator's, the checkpointer's, the Agent sink's and
// a certificate's end of validity.
func fullMetricsPage(t *testing.T) string {
	t.Helper()
	v := &localView{}
	now := time.Now().Truncate(10 * time.Second)
	if err := v.Send(context.Background(), []aggregator.Bucket{{
		Start: now.Add(-10 * time.Second), Duration: 10 * time.Second, TimestampType: aggregator.Current,
		Groups: []aggregator.Group{{Service: "orders", EdgeTags: []string{"direction:out", "topic:t", "type:kafka"}, Hash: 1, ParentHash: 0,
			PathwayLatency: sketchOf(t, 1), EdgeLatency: sketchOf(t, 1), PayloadSize: sketchOf(t, 10), PayloadBytes: 10}},
		Backlogs: []aggregator.Backlog{
			{Service: "orders", Tags: []string{"partition:0", "topic:t", "type:kafka_high_watermark"}, Value: 10},
			{Service: "billing", Tags: []string{"consumer_group:g", "partition:0", "topic:t", "type:kafka_commit"}, Value: 4},
		},
	}}); err != nil {
		t.Fatal(err)
	}
	v.errs = func() *errtrack.Snapshot {
		return &errtrack.Snapshot{Groups: []errtrack.Group{{
			Fingerprint: errtrack.Fingerprint{Category: errtrack.BrokerError, Protocol: "kafka", Service: "orders", Operation: "produce",
				Edge: pathway.Edge{Direction: pathway.Out, Topic: "t", Type: "kafka"}, Name: "NOT_LEADER_OR_FOLLOWER", Code: 6},
			TotalCount: 1, TotalMessages: 1,
		}}}
	}
	page := &metricsPage{view: v, stats: func() statsSnapshot {
		return statsSnapshot{
			Fronts: []frontStats{
				{Protocol: "kafka", Listen: "127.0.0.1:19092", Stats: kafka.Stats{}, Listeners: []kafka.ListenerConnections{{Listen: "127.0.0.1:19092", Node: -1}}},
				{Protocol: "amqp", Listen: "127.0.0.1:5673", Stats: amqp.Stats{}},
				{Protocol: "aws", Listen: "127.0.0.1:4566", Stats: aws.Stats{}},
			},
			Agent:        &aggregator.AgentStats{},
			Certificates: []certificateStatus{{Front: "amqp[0]", For: "listener", CertFile: "/etc/tls.crt", NotAfter: now}},
		}
	}}
	rec := httptest.NewRecorder()
	page.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// TestMetricsLint: /metrics passes Prometheus's own lint (promlint, what `promtool check metrics`
// runs): names, units, types, _total on counters and nowhere else, quantiles only on summaries.
func TestMetricsLint(t *testing.T) {
	problems, err := promlint.New(strings.NewReader(fullMetricsPage(t))).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestMetricsHelpSaysWhatItCounts: every family's HELP says what it counts, not only where to
// look it up: a scraper's users see the HELP beside the series, not /stats or README.md.
func TestMetricsHelpSaysWhatItCounts(t *testing.T) {
	fams := 0
	for _, line := range strings.Split(fullMetricsPage(t), "\n") {
		name, help, ok := strings.Cut(strings.TrimPrefix(line, "# HELP "), " ")
		if !ok || !strings.HasPrefix(line, "# HELP ") {
			continue
		}
		fams++
		if help == "" || strings.Contains(help, "see GET /stats and README.md") {
			t.Errorf("%s: HELP %q says nothing of its own", name, help)
		}
	}
	if fams < 50 {
		t.Fatalf("only %d families on the page: update fullMetricsPage", fams)
	}
	// And no HELP is kept for a field that is gone.
	fields := map[string]bool{}
	for _, st := range []any{kafka.Stats{}, amqp.Stats{}, aws.Stats{}, aggregator.Stats{}, aggregator.AgentStats{}, checkpointerStats{}} {
		typ := reflect.TypeOf(st)
		for i := range typ.NumField() {
			fields[typ.String()+"."+typ.Field(i).Name] = true
		}
	}
	for k := range statsHelp {
		if !fields[k] {
			t.Errorf("statsHelp has %s, which no stats struct has", k)
		}
	}
}
