package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/dsmproxy/dsmproxy/aggregator"
	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/internal/agentpayload"
	"github.com/dsmproxy/dsmproxy/pathway"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/dsmtable")

// oddNames are names as clients and brokers send them: wide and combining runes, control
// characters, invalid UTF-8, U+FFFD, commas, backslashes, quotes, empty.
var oddNames = []string{"orders", "billing-api", "日本語", "e\u0301cole", "tab\there", "nl\nx", "bad\xffbyte", "t\uFFFD", "t\xe2\x82",
	"", "a,b", `a\b`, `q"x`, "a-much-longer-service-name-than-the-others", "\x1b[31mred"}

// randomPathways returns n current-time points in trees, as a busy proxy's view holds them:
// pathways starting here (parent 0) or continuing one not shown, children up to 12 hops down,
// some hashes in cycles, and (with buckets > 1) nodes in several buckets, as the demo's table
// has them. Names are drawn from oddNames and plain ones.
func randomPathways(tb testing.TB, rng *rand.Rand, n, buckets int) []agentpayload.Point {
	tb.Helper()
	start := time.Date(2026, 12, 7, 19, 0, 0, 0, time.UTC)
	name := func(prefix string) string {
		if rng.IntN(8) == 0 {
			return oddNames[rng.IntN(len(oddNames))]
		}
		return prefix + strconv.Itoa(rng.IntN(300))
	}
	type node struct {
		hash, parent uint64
		depth        int
		latency      float64
	}
	var nodes []node
	pts := make([]agentpayload.Point, 0, n)
	for len(pts) < n {
		var nd node
		switch r := rng.IntN(10); {
		case r < 3 || len(nodes) == 0: // starts here
			nd = node{hash: rng.Uint64(), latency: rng.Float64() * 0.01}
		case r < 4: // continues a pathway not shown
			nd = node{hash: rng.Uint64(), parent: rng.Uint64(), latency: rng.Float64() * 5}
		case r < 5 && len(nodes) > 2: // a forged or colliding hash: a cycle
			a, b := &nodes[rng.IntN(len(nodes))], nodes[rng.IntN(len(nodes))]
			a.parent = b.hash
			continue
		default:
			p := nodes[rng.IntN(len(nodes))]
			if p.depth >= 12 {
				continue
			}
			nd = node{hash: rng.Uint64(), parent: p.hash, depth: p.depth + 1, latency: p.latency + rng.Float64()*3}
		}
		nodes = append(nodes, nd)
		edge := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: name("topic-")}
		if rng.IntN(2) == 0 {
			edge.Direction, edge.Group = pathway.In, name("group-")
		}
		service := name("svc-")
		for b := range 1 + rng.IntN(buckets) {
			if len(pts) == n {
				break
			}
			edgeLatency := sketchOf(tb)
			for range 1 + rng.IntN(4) {
				edgeLatency.Add(rng.Float64() * 2)
			}
			var size = sketchOf(tb)
			if rng.IntN(20) > 0 { // some points have no size
				size.Add(float64(rng.IntN(100_000)))
			}
			pts = append(pts, agentpayload.Point{Service: service, Start: start.Add(time.Duration(-b) * 10 * time.Second), Duration: 10 * time.Second,
				TimestampType: "current", EdgeTags: edge.Tags(), Hash: nd.hash, ParentHash: nd.parent,
				PathwayLatency: sketchOf(tb, nd.latency, nd.latency*1.5), EdgeLatency: edgeLatency, PayloadSize: size})
		}
	}
	// The cycles made above set parents after the points were made.
	parents := make(map[uint64]uint64, len(nodes))
	for _, nd := range nodes {
		parents[nd.hash] = nd.parent
	}
	for i := range pts {
		pts[i].ParentHash = parents[pts[i].Hash]
	}
	return pts
}

// randomLag returns Kafka offsets for n groups' partitions.
func randomLag(rng *rand.Rand, n int) []agentpayload.BacklogEntry {
	start := time.Date(2026, 12, 7, 19, 0, 0, 0, time.UTC)
	var bl []agentpayload.BacklogEntry
	for i := range n {
		topic, group := oddNames[i%len(oddNames)]+strconv.Itoa(i), "group-"+strconv.Itoa(rng.IntN(50))
		p := strconv.Itoa(rng.IntN(4))
		end := int64(rng.IntN(1_000_000))
		bl = append(bl,
			agentpayload.BacklogEntry{Service: "svc", Start: start, Tags: []string{"kafka_cluster_id:c1", "partition:" + p, "topic:" + topic, "type:kafka_high_watermark"}, Value: end},
			agentpayload.BacklogEntry{Service: "svc", Start: start, Tags: []string{"consumer_group:" + group, "kafka_cluster_id:c1", "partition:" + p, "topic:" + topic, "type:kafka_commit"}, Value: end - int64(rng.IntN(1000))})
	}
	return bl
}

// viewTotals returns totals and sizes for pts as the view hands them to printTable: for most
// points, by pathwayKey.
func viewTotals(rng *rand.Rand, pts []agentpayload.Point) (map[string]pathwayTotal, map[string]float64) {
	totals, sizes := map[string]pathwayTotal{}, map[string]float64{}
	for _, p := range pts {
		key := pathwayKey(p.Service, p.EdgeTags, p.Hash, p.ParentHash)
		if rng.IntN(10) > 0 {
			totals[key] = pathwayTotal{Messages: rng.Uint64N(1 << 40), Bytes: rng.Uint64N(1 << 50)}
		}
		if rng.IntN(3) > 0 {
			sizes[key] = rng.Float64() * 100_000
		}
	}
	return totals, sizes
}

// TestPathwayTableGolden: the /dsm table (with totals and exact sizes) and the demo's (nodes in
// several buckets, no totals) of random pathways, names from clients included, are what they
// were when the golden files were written.
func TestPathwayTableGolden(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	view := randomPathways(t, rng, 150, 1)
	totals, sizes := viewTotals(rng, view)
	demo := randomPathways(t, rng, 120, 3)
	// Origin-time points are not in the table.
	origin := randomPathways(t, rng, 5, 1)
	for i := range origin {
		origin[i].TimestampType = "origin"
	}
	view, demo = append(view, origin...), append(demo, origin...)
	lag := randomLag(rng, 20)
	for _, c := range []struct {
		file   string
		pts    []agentpayload.Point
		lag    []agentpayload.BacklogEntry
		totals map[string]pathwayTotal
		sizes  map[string]float64
	}{
		{"view.txt", view, lag, totals, sizes},
		{"demo.txt", demo, lag, nil, nil},
		{"view_lag_only.txt", origin, lag, map[string]pathwayTotal{}, map[string]float64{}},
		{"demo_empty.txt", nil, nil, nil, nil},
	} {
		var buf bytes.Buffer
		printTable(&buf, "== title ==", c.pts, c.lag, c.totals, c.sizes)
		checkGolden(t, filepath.Join("testdata", "dsmtable", c.file), buf.Bytes())
	}
}

// bigView is a local view of n pathways in trees (randomPathways) and n/4 groups' offsets,
// flushed once, as a busy proxy's.
func bigView(b *testing.B, n int) *localView {
	rng := rand.New(rand.NewPCG(1, 2))
	pts := randomPathways(b, rng, n, 1)
	bucket := aggregator.Bucket{Start: time.Now().Truncate(10 * time.Second).Add(-10 * time.Second), Duration: 10 * time.Second, TimestampType: aggregator.Current}
	for _, p := range pts {
		bucket.Groups = append(bucket.Groups, aggregator.Group{Service: p.Service, EdgeTags: p.EdgeTags, Hash: p.Hash, ParentHash: p.ParentHash,
			PathwayLatency: p.PathwayLatency, EdgeLatency: p.EdgeLatency, PayloadSize: p.PayloadSize, PayloadBytes: uint64(p.PayloadSize.GetSum())})
	}
	for _, e := range randomLag(rng, n/4) {
		bucket.Backlogs = append(bucket.Backlogs, aggregator.Backlog{Service: e.Service, Tags: e.Tags, Value: e.Value})
	}
	v := &localView{}
	if err := v.Send(context.Background(), []aggregator.Bucket{bucket}); err != nil {
		b.Fatal(err)
	}
	return v
}

// BenchmarkDSMPage: a scrape of /dsm with 20,000 pathways and 5,000 groups' offsets in the view.
func BenchmarkDSMPage(b *testing.B) {
	v := bigView(b, 20_000)
	req := httptest.NewRequest("GET", "/dsm", nil)
	w := &discardResponse{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		v.ServeHTTP(w, req)
	}
}

// BenchmarkPathwayTable: the table of /dsm alone, from the view's copy, with 20,000 pathways.
func BenchmarkPathwayTable(b *testing.B) {
	c := bigView(b, 20_000).contents()
	pts := make([]agentpayload.Point, len(c.pts))
	var buf bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		copy(pts, c.pts) // printTable may order what it is given
		buf.Reset()
		printTable(&buf, "== title ==", pts, c.bl, c.totals, c.sizes)
	}
}

// randomErrorGroups returns n tracked error groups on Kafka, SQS and AMQP edges.
func randomErrorGroups(rng *rand.Rand, n int) *errtrack.Snapshot {
	s := &errtrack.Snapshot{TracesDropped: 1, Overflow: 2, OverflowLost: 3, Evicted: 4}
	for i := range n {
		edge := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: oddNames[rng.IntN(len(oddNames))] + strconv.Itoa(i), ClusterID: "c1"}
		switch rng.IntN(3) {
		case 1:
			edge = pathway.Edge{Direction: pathway.In, Type: pathway.TypeKafka, Topic: "t" + strconv.Itoa(i), Group: oddNames[rng.IntN(len(oddNames))]}
		case 2:
			edge = pathway.Edge{Direction: pathway.Out, Type: pathway.TypeRabbitMQ, Exchange: oddNames[rng.IntN(len(oddNames))], HasRoutingKey: pathway.RoutingKeyTrue}
		}
		s.Groups = append(s.Groups, errtrack.Group{Fingerprint: errtrack.Fingerprint{Category: errtrack.BrokerError, Protocol: "kafka",
			Service: oddNames[rng.IntN(len(oddNames))], Operation: "produce", Edge: edge, Name: "NOT_LEADER_OR_FOLLOWER", Code: int32(rng.IntN(100))},
			TotalCount: rng.Int64N(1 << 40), TotalMessages: rng.Int64N(1 << 50)})
	}
	return s
}

// TestTrackedErrorsGolden: the tracked errors' families of /metrics, names from clients
// included, are what they were when the golden file was written.
func TestTrackedErrorsGolden(t *testing.T) {
	s := randomErrorGroups(rand.New(rand.NewPCG(3, 5)), 60)
	var buf bytes.Buffer
	p := &promWriter{w: bufio.NewWriter(&buf)}
	p.trackedErrors(s)
	if err := p.w.Flush(); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, filepath.Join("testdata", "dsmtable", "tracked_errors.txt"), buf.Bytes())
}

// BenchmarkTrackedErrors: the tracked errors' families of /metrics with the default
// errors.max_fingerprints (1,000) groups.
func BenchmarkTrackedErrors(b *testing.B) {
	s := randomErrorGroups(rand.New(rand.NewPCG(3, 5)), errtrack.DefaultMaxFingerprints)
	p := &promWriter{w: bufio.NewWriterSize(io.Discard, 64<<10)}
	b.ReportAllocs()
	for b.Loop() {
		p.trackedErrors(s)
	}
}

// TestErrorTableGolden: the tracked errors' table of /dsm and the demo, names from clients
// included, is what it was when the golden file was written.
func TestErrorTableGolden(t *testing.T) {
	s := randomErrorGroups(rand.New(rand.NewPCG(13, 17)), 60)
	s.Groups[0].Code = 0 // a skip: no code shown
	var buf bytes.Buffer
	printErrors(&buf, s)
	checkGolden(t, filepath.Join("testdata", "dsmtable", "errors.txt"), buf.Bytes())
}

// checkGolden compares got with the golden file at path, which -update rewrites.
func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the output differs from %s (run with -update after checking): got %d bytes\n%s", path, len(got), got)
	}
}
