package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/dsmproxy/dsmproxy/aggregator"
)

// manyPathwaysView is a local view of n pathways (each on its own topic, consumed by a group
// of its own) and their Kafka offsets: 8 series per pathway and 3 per offset pair on /metrics.
func manyPathwaysView(t *testing.T, n int) *localView {
	t.Helper()
	v := &localView{}
	now := time.Now().Truncate(10 * time.Second)
	b := aggregator.Bucket{Start: now.Add(-10 * time.Second), Duration: 10 * time.Second, TimestampType: aggregator.Current}
	for i := range n {
		topic := fmt.Sprintf("topic-%05d", i)
		b.Groups = append(b.Groups, aggregator.Group{Service: "svc-" + topic, EdgeTags: []string{"direction:in", "group:g-" + topic, "topic:" + topic, "type:kafka"},
			Hash: uint64(i) + 1, ParentHash: uint64(i) * 7, PathwayLatency: sketchOf(t, 0.1, 0.2), EdgeLatency: sketchOf(t, 0.01, 0.02),
			PayloadSize: sketchOf(t, 100, 200), PayloadBytes: 300})
		b.Backlogs = append(b.Backlogs,
			aggregator.Backlog{Service: "svc-" + topic, Tags: []string{"partition:0", "topic:" + topic, "type:kafka_high_watermark"}, Value: 100},
			aggregator.Backlog{Service: "svc-" + topic, Tags: []string{"consumer_group:g-" + topic, "partition:0", "topic:" + topic, "type:kafka_commit"}, Value: 40})
	}
	if err := v.Send(context.Background(), []aggregator.Bucket{b}); err != nil {
		t.Fatal(err)
	}
	return v
}

// discardResponse is a ResponseWriter that only counts what it is sent, so a scrape's allocations
// are the page's own.
type discardResponse struct {
	h http.Header
	n int
}

func (d *discardResponse) Header() http.Header         { return d.h }
func (d *discardResponse) WriteHeader(int)             {}
func (d *discardResponse) Write(p []byte) (int, error) { d.n += len(p); return len(p), nil }

// TestMetricsPageIsStreamed: a scrape of a big view writes the page as it goes instead of
// building it in memory first. Built first, a soak's view (60,000 pathways) took 20-60 MB and
// seconds per scrape, 2.8 times the page's own size here; streamed, a scrape allocates the
// view's copy and the consumer lag, and next to nothing per series.
func TestMetricsPageIsStreamed(t *testing.T) {
	page := &metricsPage{view: manyPathwaysView(t, 5000)}
	req := httptest.NewRequest("GET", "/metrics", nil)
	w := &discardResponse{h: http.Header{}}
	page.ServeHTTP(w, req)
	pageBytes := uint64(w.n)
	// The least of a few scrapes, so that what other goroutines allocate meanwhile does not count.
	least := uint64(math.MaxUint64)
	for range 3 {
		goruntime.GC()
		var before, after goruntime.MemStats
		goruntime.ReadMemStats(&before)
		page.ServeHTTP(w, req)
		goruntime.ReadMemStats(&after)
		least = min(least, after.TotalAlloc-before.TotalAlloc)
	}
	if least > pageBytes {
		t.Errorf("a scrape of a %d-byte page allocated %d bytes: want less than the page, written as it goes", pageBytes, least)
	}
}

// TestEdgeTagsWrittenAsDefined: the page writes edge_tags tag by tag where no tag needs the
// edge escaping; the value is still edgeTagsLabel's, made a label value (invalid bytes, U+FFFD,
// quotes and newlines included).
func TestEdgeTagsWrittenAsDefined(t *testing.T) {
	v := &localView{}
	now := time.Now().Truncate(10 * time.Second)
	var groups []aggregator.Group
	names := []string{"plain", `q"x`, "nl\nx", "t\xff", "t\uFFFD", "t\xe2\x82", "t\xe2", "日本", "", "a,b", `a\b`, "t\xe2,"}
	for i, name := range names {
		groups = append(groups, aggregator.Group{Service: "s", EdgeTags: []string{"direction:in", "group:" + name, "topic:t\xe2", "type:kafka"},
			Hash: uint64(i) + 1, PathwayLatency: sketchOf(t, 1), EdgeLatency: sketchOf(t, 1), PayloadSize: sketchOf(t, 1), PayloadBytes: 1})
	}
	if err := v.Send(context.Background(), []aggregator.Bucket{{Start: now.Add(-10 * time.Second), Duration: 10 * time.Second,
		TimestampType: aggregator.Current, Groups: groups}}); err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	(&metricsPage{view: v}).ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	page := w.Body.String()
	for _, g := range groups {
		want := fmt.Sprintf(`dsmproxy_pathway_messages_per_second{service="s",edge_tags="%s",hash="%016x",`, escapeLabel(edgeTagsLabel(g.EdgeTags)), g.Hash)
		if !strings.Contains(page, want) {
			t.Errorf("edge tags %q: no line starting %q in\n%s", g.EdgeTags, want, page)
		}
	}
}
