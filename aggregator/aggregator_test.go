package aggregator

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/pathway"
)

var t0 = time.Unix(1700000000, 0) // a bucket boundary (divisible by 10 s)

// TestSketchVectors: sketches serialize to the spec's bytes (dsm-protocol.md 4.3).
func TestSketchVectors(t *testing.T) {
	a := New(Config{})
	for _, tc := range []struct {
		v    float64
		want string
	}{
		{1.0, "0a1209000000000040f03f1100d88afe9e04fe3f120c1208000000000000f03f18021a00"},
		{0, "0a1209000000000040f03f1100d88afe9e04fe3f12001a0021000000000000f03f"},
		{5, "0a1209000000000040f03f1100d88afe9e04fe3f120d1208000000000000f03f18d2011a00"},
	} {
		s, _ := a.newSketch()
		if err := s.Add(tc.v); err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(encodeSketch(s)); got != tc.want {
			t.Errorf("sketch {%v} = %s, want %s", tc.v, got, tc.want)
		}
	}
}

func point(svc string, hash, parent uint64, at time.Time, pathwayLat, edgeLat time.Duration, size int64, tags ...string) pathway.Point {
	return pathway.Point{Service: svc, EdgeTags: tags, Hash: hash, ParentHash: parent, Time: at.UnixNano(),
		PathwayLatency: int64(pathwayLat), EdgeLatency: int64(edgeLat), PayloadSize: size}
}

// TestBuckets: current by checkpoint time, origin by pathway start; groups by (service, hash,
// parent); offsets keep the max per key; only finished windows flush unless final.
func TestBuckets(t *testing.T) {
	a := New(Config{DefaultService: "proxy"})
	a.Start()
	defer a.Close()
	out := []string{"direction:out", "topic:orders", "type:kafka"}
	a.Add(point("orders", 1, 0, t0.Add(2*time.Second), 0, 0, 100, out...))
	a.Add(point("orders", 1, 0, t0.Add(3*time.Second), 0, 0, 300, out...))
	// A consume whose pathway started 15 s earlier: current bucket t0+10s, origin bucket t0.
	in := []string{"direction:in", "group:billing", "topic:orders", "type:kafka"}
	a.Add(point("billing", 2, 1, t0.Add(12*time.Second), 10*time.Second, 4*time.Second, 100, in...))
	a.Offset(pathway.Offset{Kind: pathway.KafkaProduce, Service: "orders", Topic: "orders", Partition: 0, Value: 41, Time: t0.Add(time.Second).UnixNano()})
	a.Offset(pathway.Offset{Kind: pathway.KafkaProduce, Service: "orders", Topic: "orders", Partition: 0, Value: 45, Time: t0.Add(2 * time.Second).UnixNano()})
	a.Offset(pathway.Offset{Kind: pathway.KafkaProduce, Service: "orders", Topic: "orders", Partition: 0, Value: 43, Time: t0.Add(3 * time.Second).UnixNano()})
	a.Offset(pathway.Offset{Kind: pathway.KafkaHighWatermark, Topic: "orders", Partition: 0, Value: 46, Time: t0.Add(3 * time.Second).UnixNano()})

	got := a.Flush(t0.Add(10*time.Second), false)
	if len(got) != 2 {
		t.Fatalf("flush at t0+10s: %d buckets, want 2 (current and origin of t0)", len(got))
	}
	cur, org := got[0], got[1]
	if cur.TimestampType != Current || org.TimestampType != Origin || !cur.Start.Equal(t0) || !org.Start.Equal(t0) {
		t.Fatalf("buckets: %v %v / %v %v", cur.TimestampType, cur.Start, org.TimestampType, org.Start)
	}
	if len(cur.Groups) != 1 || cur.Groups[0].Hash != 1 || cur.Groups[0].PayloadSize.GetCount() != 2 {
		t.Fatalf("current groups: %+v", cur.Groups)
	}
	if s := cur.Groups[0].PayloadSize.GetSum(); math.Abs(s-400)/400 > 0.008 {
		t.Errorf("payload size sum %v, want ~400", s)
	}
	if b := cur.Groups[0].PayloadBytes; b != 400 {
		t.Errorf("exact payload bytes %d, want 400", b)
	}
	// The origin bucket of t0 has the produce and the consume whose pathway started at t0+2s.
	if len(org.Groups) != 2 {
		t.Fatalf("origin groups: %d, want 2", len(org.Groups))
	}
	// The highest offset is what the Agent gets; the last one (a commit can go back) is kept beside it.
	wantBacklogs := []Backlog{
		{Service: "orders", Tags: []string{"partition:0", "topic:orders", "type:kafka_produce"}, Value: 45, Last: 43, LastAt: t0.Add(3 * time.Second)},
		{Service: "proxy", Tags: []string{"partition:0", "topic:orders", "type:kafka_high_watermark"}, Value: 46, Last: 46, LastAt: t0.Add(3 * time.Second)},
	}
	if len(cur.Backlogs) != len(wantBacklogs) {
		t.Fatalf("backlogs %+v, want %+v", cur.Backlogs, wantBacklogs)
	}
	for i, w := range wantBacklogs {
		g := cur.Backlogs[i]
		if g.Service != w.Service || g.Value != w.Value || g.Last != w.Last || !g.LastAt.Equal(w.LastAt) || len(g.Tags) != len(w.Tags) {
			t.Errorf("backlog %d = %+v, want %+v", i, g, w)
		}
	}
	if len(org.Backlogs) != 0 {
		t.Errorf("origin bucket carries backlogs: %+v", org.Backlogs)
	}
	rest := a.Flush(t0.Add(10*time.Second), true)
	if len(rest) != 1 || rest[0].TimestampType != Current || !rest[0].Start.Equal(t0.Add(10*time.Second)) {
		t.Fatalf("final flush: %+v", rest)
	}
	if e := rest[0].Groups[0].EdgeLatency; e.GetCount() != 1 {
		t.Fatalf("edge latency count %v", e.GetCount())
	} else if q, _ := e.GetValueAtQuantile(0.5); math.Abs(q-4)/4 > 0.008 {
		t.Errorf("edge latency %v s, want ~4 s", q)
	}
	if st := a.Stats(); st.OpenBuckets != 0 || st.Buckets != 3 || st.Aggregated != 3 {
		t.Errorf("stats %+v", st)
	}
}

// TestConcurrentAdd: 16 goroutines adding 1M points lose none below the bound and are -race clean.
func TestConcurrentAdd(t *testing.T) {
	const workers, per = 16, 62500
	a := New(Config{QueueSize: 1 << 14})
	a.Start()
	tags := []string{"direction:out", "topic:t", "type:kafka"}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := point("svc", uint64(w%4), 0, t0, time.Millisecond, time.Millisecond, 10, tags...)
			for range per {
				for !a.Add(p) {
					// Full: the bound was reached. Back off and retry so the test counts every point;
					// the drop counter proves the refusal was counted, not lost.
					time.Sleep(time.Microsecond)
				}
			}
		}()
	}
	wg.Wait()
	a.Close()
	n := currentPoints(a.Flush(t0, true))
	st := a.Stats()
	if n != workers*per || st.Points != workers*per || st.Aggregated != workers*per {
		t.Fatalf("aggregated %v points (stats %+v), want %d", n, st, workers*per)
	}
	t.Logf("refused while full (then retried): %d", st.PointsDropped)
}

// TestConcurrentAddUpToBound: with the consumer stopped, 16 goroutines filling the queue exactly
// to its bound get every point accepted (wherever their shards are), and the next is refused.
func TestConcurrentAddUpToBound(t *testing.T) {
	const workers, per = 16, 1000
	a := New(Config{QueueSize: workers * per})
	var wg sync.WaitGroup
	var refused sync.Map
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := point("svc", uint64(w), 0, t0, 0, time.Millisecond, 10)
			for i := range per {
				if !a.Add(p) {
					refused.Store(w*per+i, true)
				}
			}
		}()
	}
	wg.Wait()
	refused.Range(func(k, _ any) bool { t.Errorf("point %v refused below the bound", k); return true })
	if a.Add(point("svc", 99, 0, t0, 0, 0, 1)) {
		t.Error("Add beyond the bound accepted")
	}
	a.Close()
	n := currentPoints(a.Flush(t0, true))
	if st := a.Stats(); n != workers*per || st.PointsDropped != 1 {
		t.Fatalf("aggregated %v, stats %+v; want %d and one drop", n, st, workers*per)
	}
}

// TestSameHashOtherTags: points sharing hashes but not edge tags (a tag outside the hash) or
// service stay separate groups.
func TestSameHashOtherTags(t *testing.T) {
	a := New(Config{})
	a.Add(point("s", 1, 0, t0, 0, 0, 1, "exchange:x", "has_routing_key:true"))
	a.Add(point("s", 1, 0, t0, 0, 0, 1, "exchange:x", "has_routing_key:false"))
	a.Add(point("s", 1, 0, t0, 0, 0, 1, "exchange:x", "has_routing_key:true"))
	a.Add(point("t", 1, 0, t0, 0, 0, 1, "exchange:x", "has_routing_key:true"))
	a.Close()
	gs := a.Flush(t0, true)[0].Groups
	if len(gs) != 3 {
		t.Fatalf("%d groups, want 3: %+v", len(gs), gs)
	}
	for i, want := range []float64{1, 2, 1} {
		if c := gs[i].EdgeLatency.GetCount(); c != want {
			t.Errorf("group %d (%s %v): %v points, want %v", i, gs[i].Service, gs[i].EdgeTags, c, want)
		}
	}
}

// TestDropWhenFull: with no consumer, Add refuses beyond the bound without blocking and counts it.
func TestDropWhenFull(t *testing.T) {
	a := New(Config{QueueSize: 8})
	for i := range 20 {
		ok := a.Add(point("s", 1, 0, t0, 0, 0, 1))
		if ok != (i < 8) {
			t.Fatalf("Add #%d = %v", i, ok)
		}
	}
	for i := range 10 {
		a.Offset(pathway.Offset{Kind: pathway.KafkaCommit, Topic: "t", Value: int64(i), Time: t0.UnixNano()})
	}
	st := a.Stats()
	if st.Points != 8 || st.PointsDropped != 12 || st.Offsets != 8 || st.OffsetsDropped != 2 {
		t.Fatalf("stats %+v", st)
	}
	a.Close() // never started: drains inline
	bs := a.Flush(t0, true)
	if len(bs) != 2 || bs[0].Groups[0].EdgeLatency.GetCount() != 8 || bs[0].Backlogs[0].Value != 7 {
		t.Fatalf("after close: %+v", bs)
	}
}

// currentPoints counts the points in the current-time buckets of bs.
func currentPoints(bs []Bucket) float64 {
	var n float64
	for _, b := range bs {
		if b.TimestampType == Current {
			for _, g := range b.Groups {
				n += g.EdgeLatency.GetCount()
			}
		}
	}
	return n
}

// TestAddAll: AddAll queues a prefix of its points up to the bound, counts the rest as dropped,
// and from several goroutines at once loses none it accepted.
func TestAddAll(t *testing.T) {
	t.Run("bound", func(t *testing.T) {
		a := New(Config{QueueSize: 8})
		ps := make([]pathway.Point, 5)
		for i := range ps {
			ps[i] = point("s", 1, 0, t0, 0, 0, int64(i))
		}
		if n := a.AddAll(ps); n != 5 {
			t.Fatalf("first AddAll queued %d, want 5", n)
		}
		if n := a.AddAll(ps); n != 3 {
			t.Fatalf("second AddAll queued %d, want 3 (the bound is 8)", n)
		}
		if n := a.AddAll(ps); n != 0 {
			t.Fatalf("AddAll into a full queue queued %d", n)
		}
		if st := a.Stats(); st.Points != 8 || st.PointsDropped != 7 {
			t.Fatalf("stats %+v, want 8 queued and 7 dropped", st)
		}
		a.Close()
		if g := a.Flush(t0, true)[0].Groups[0]; g.PayloadSize.GetCount() != 8 {
			t.Fatalf("aggregated %v points, want 8", g.PayloadSize.GetCount())
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		const workers, batches, per = 8, 2000, 100
		a := New(Config{QueueSize: 1 << 12})
		a.Start()
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ps := make([]pathway.Point, per)
				for i := range ps {
					ps[i] = point("svc", uint64(w%4), 0, t0, time.Millisecond, time.Millisecond, 10, "type:kafka")
				}
				for range batches {
					for rest := ps; len(rest) > 0; {
						n := a.AddAll(rest)
						rest = rest[n:]
						if len(rest) > 0 {
							time.Sleep(time.Microsecond) // full: retry the rest so every point is counted
						}
					}
				}
			}()
		}
		wg.Wait()
		a.Close()
		n := currentPoints(a.Flush(t0, true))
		if want := float64(workers * batches * per); n != want || a.Stats().Aggregated != uint64(want) {
			t.Fatalf("aggregated %v points (stats %+v), want %v", n, a.Stats(), want)
		}
	})
}

func TestNegativeValuesClamp(t *testing.T) {
	a := New(Config{})
	a.Add(point("s", 1, 0, t0, -time.Second, -time.Second, -5))
	a.Close()
	g := a.Flush(t0, true)[0].Groups[0]
	for _, s := range []*ddsketch.DDSketch{g.PathwayLatency, g.EdgeLatency, g.PayloadSize} {
		if s.GetZeroCount() != 1 {
			t.Errorf("negative value not clamped to 0: zero count %v", s.GetZeroCount())
		}
	}
	if g.PayloadBytes != 0 {
		t.Errorf("negative size counted as %d bytes", g.PayloadBytes)
	}
}

// BenchmarkAdd: the data path's cost of handing a checkpoint over (consumer running). When the
// consumer cannot keep up, the queue fills and Add takes its drop path: dropped/op says how often.
func BenchmarkAdd(b *testing.B) {
	a := New(Config{QueueSize: 1 << 16})
	a.Start()
	defer a.Close()
	p := point("svc", 1, 2, t0, time.Millisecond, time.Millisecond, 100, "direction:out", "topic:t", "type:kafka")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p.EdgeLatency = int64(i % 1000000)
		a.Add(p)
	}
	b.StopTimer()
	st := a.Stats()
	b.ReportMetric(float64(st.PointsDropped)/float64(b.N), "dropped/op")
}

// BenchmarkAddSustained: every point is accepted and aggregated (a refused Add yields to the
// consumer and retries), so ns/op is the end-to-end cost of a point, hand-off plus aggregation;
// with -cpu 1 producer and consumer share one core.
func BenchmarkAddSustained(b *testing.B) {
	for _, batch := range []int{1, 100} {
		// batch 100: AddAll with a record batch's points, as the Kafka front hands them over.
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			a := New(Config{QueueSize: 1 << 16})
			a.Start()
			ps := make([]pathway.Point, batch)
			for i := range ps {
				ps[i] = point("svc", 1, 2, t0, time.Millisecond, time.Millisecond, 100, "direction:out", "topic:t", "type:kafka")
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i += batch {
				ps[0].EdgeLatency = int64(i % 1000000)
				rest := ps[:min(batch, b.N-i)]
				if batch == 1 {
					for !a.Add(rest[0]) {
						runtime.Gosched()
					}
					continue
				}
				for len(rest) > 0 {
					rest = rest[a.AddAll(rest):]
					if len(rest) > 0 {
						runtime.Gosched()
					}
				}
			}
			a.Close() // waits until everything queued is aggregated
			el := time.Since(start)
			b.StopTimer()
			if st := a.Stats(); st.Aggregated != uint64(b.N) {
				b.Fatalf("aggregated %d of %d", st.Aggregated, b.N)
			}
			b.ReportMetric(float64(b.N)/el.Seconds(), "points/s")
		})
	}
}

// BenchmarkAggregate: the consumer's cost per point (two buckets, six sketch inserts).
func BenchmarkAggregate(b *testing.B) {
	a := New(Config{})
	p := point("svc", 1, 2, t0, time.Millisecond, time.Millisecond, 100, "direction:out", "topic:t", "type:kafka")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p.EdgeLatency = int64(i % 1000000)
		a.addPoint(&p)
	}
}

// BenchmarkAddParallel: many data-path goroutines handing points over at once, every point
// accepted and aggregated (refusals yield and retry).
func BenchmarkAddParallel(b *testing.B) {
	a := New(Config{QueueSize: 1 << 16})
	a.Start()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		p := point("svc", 1, 2, t0, time.Millisecond, time.Millisecond, 100, "direction:out", "topic:t", "type:kafka")
		i := 0
		for pb.Next() {
			i++
			p.EdgeLatency = int64(i % 1000000)
			for !a.Add(p) {
				runtime.Gosched()
			}
		}
	})
	a.Close()
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "points/s")
}

// TestGroupLimit: points that would open a group past MaxGroups are counted, not folded in; the
// groups already open still take points, and a flush makes room again.
func TestGroupLimit(t *testing.T) {
	a := New(Config{MaxGroups: 4})
	for parent := uint64(1); parent <= 6; parent++ { // each: a group in its current and its origin bucket
		a.Add(point("s", 1, parent, t0, 0, 0, 1))
	}
	a.Add(point("s", 1, 1, t0, 0, 0, 1)) // an open group
	a.Close()
	st := a.Stats()
	if st.GroupsRefused != 8 {
		t.Errorf("%d points refused, want 8 (parents 3 to 6, in both buckets)", st.GroupsRefused)
	}
	if n := currentPoints(a.Flush(t0, true)); n != 3 {
		t.Errorf("%v points in the current buckets, want 3 (parents 1 and 2, parent 1 twice)", n)
	}
	b := New(Config{MaxGroups: 4})
	for parent := uint64(1); parent <= 2; parent++ {
		b.Add(point("s", 1, parent, t0, 0, 0, 1))
	}
	b.Close()
	b.Flush(t0, true)
	if b.groups != 0 {
		t.Errorf("%d groups counted open after the flush", b.groups)
	}
}

// TestFlusherReportsDrops: a flush logs what was dropped since the one before, once.
func TestFlusherReportsDrops(t *testing.T) {
	a := New(Config{MaxGroups: 2})
	var logs bytes.Buffer
	f := NewFlusher(a, time.Second, zerolog.New(&logs))
	for parent := uint64(1); parent <= 3; parent++ {
		a.Add(point("s", 1, parent, t0, 0, 0, 1))
	}
	a.Close()
	f.FlushNow(context.Background(), true)
	if !strings.Contains(logs.String(), `"points_group_limit":4`) {
		t.Errorf("first flush logged %q", logs.String())
	}
	logs.Reset()
	f.FlushNow(context.Background(), true)
	if logs.Len() != 0 {
		t.Errorf("a flush with nothing new dropped logged %q", logs.String())
	}
}

// TestBacklogLimit: offsets that would open a backlog past MaxBacklogs are counted, not kept;
// open backlogs still move forward, a flush makes room again, and the flusher logs the refusals.
func TestBacklogLimit(t *testing.T) {
	a := New(Config{MaxBacklogs: 3})
	var logs bytes.Buffer
	f := NewFlusher(a, time.Second, zerolog.New(&logs))
	at := t0.UnixNano()
	for g := range 5 { // a client committing under made-up group names
		a.Offset(pathway.Offset{Kind: pathway.KafkaCommit, Group: fmt.Sprint("g", g), Topic: "t", Value: 10, Time: at})
	}
	a.Offset(pathway.Offset{Kind: pathway.KafkaCommit, Group: "g0", Topic: "t", Value: 20, Time: at})
	a.Close()
	if st := a.Stats(); st.OffsetsRefused != 2 {
		t.Errorf("%d offsets refused, want 2 (groups g3, g4)", st.OffsetsRefused)
	}
	bs := a.Flush(t0.Add(time.Hour), true)
	var kept []string
	for _, b := range bs {
		for _, bl := range b.Backlogs {
			kept = append(kept, fmt.Sprint(bl.Tags, bl.Value))
		}
	}
	slices.Sort(kept)
	if len(kept) != 3 || !strings.Contains(kept[0], "group:g0") || !strings.HasSuffix(kept[0], " 20") {
		t.Errorf("backlogs %q, want g0 (at 20), g1 and g2", kept)
	}
	if a.backlogs != 0 {
		t.Errorf("%d backlogs counted open after the flush", a.backlogs)
	}
	f.FlushNow(context.Background(), true)
	if !strings.Contains(logs.String(), `"offsets_backlog_limit":2`) {
		t.Errorf("flush logged %q", logs.String())
	}
}

// TestOriginFarAheadIsClamped: a pathway start a few seconds ahead of the checkpoint (clock skew)
// keeps its origin bucket, as dd-trace-go files it; one hours ahead is filed at the checkpoint's
// own time and counted, so its bucket, and its room under MaxGroups, is freed at the next flush
// instead of hours later.
func TestOriginFarAheadIsClamped(t *testing.T) {
	a := New(Config{})
	a.Start()
	defer a.Close()
	in := []string{"direction:in", "topic:orders", "type:kafka"}
	a.Add(point("skewed", 1, 9, t0.Add(time.Second), -5*time.Second, 0, 10, in...))   // start t0+6s: same window
	a.Add(point("skewed", 2, 9, t0.Add(9*time.Second), -5*time.Second, 0, 10, in...)) // start t0+14s: next window
	a.Add(point("forged", 3, 9, t0.Add(2*time.Second), -3*time.Hour, 0, 10, in...))   // start 3 h ahead
	got := a.Flush(t0.Add(10*time.Second), false)
	origins := map[string]bool{}
	for _, b := range got {
		if b.TimestampType != Origin {
			continue
		}
		for _, g := range b.Groups {
			origins[fmt.Sprintf("%s@%v", g.Service, b.Start.Sub(t0))] = true
		}
	}
	if !origins["skewed@0s"] || !origins["forged@0s"] || len(origins) != 2 {
		t.Errorf("origin groups flushed at t0+10s: %v; want skewed@0s and forged@0s (clamped)", origins)
	}
	if st := a.Stats(); st.OriginsClamped != 1 || st.OpenBuckets != 1 {
		t.Errorf("OriginsClamped %d, OpenBuckets %d; want 1 and 1 (the 4 s skewed point's origin window)", st.OriginsClamped, st.OpenBuckets)
	}
}

// TestCountedPoint: a point with Count n leaves what n copies of it leave (the sketches the Agent
// gets, byte for byte, the exact byte count and the counters), in both timestamp types, for
// values the sketch indexes and for zero latencies, which it keeps apart.
func TestCountedPoint(t *testing.T) {
	tags := []string{"direction:in", "topic:orders", "type:kafka"}
	for _, tc := range []struct {
		name          string
		pathway, edge time.Duration
		size          int64
	}{
		{"indexed", 3 * time.Second, 40 * time.Millisecond, 1024},
		{"zeros", 0, 0, 0},
		{"negative pathway", -time.Second, 0, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pt := point("orders-consumer", 1, 2, t0, tc.pathway, tc.edge, tc.size, tags...)
			repeated, counted := New(Config{}), New(Config{})
			for range 37 {
				repeated.Add(pt)
			}
			pt.Count = 37
			counted.AddAll([]pathway.Point{pt})
			repeated.Close()
			counted.Close()
			if r, c := repeated.Stats(), counted.Stats(); r != c {
				t.Fatalf("stats: 37 points %+v, one of count 37 %+v", r, c)
			}
			rb, cb := repeated.Flush(t0, true), counted.Flush(t0, true)
			if len(rb) != 2 || len(cb) != len(rb) {
				t.Fatalf("%d and %d buckets, want 2 each", len(rb), len(cb))
			}
			for i := range rb {
				rg, cg := rb[i].Groups[0], cb[i].Groups[0]
				if rg.PayloadBytes != cg.PayloadBytes {
					t.Errorf("bucket %d: payload bytes %d from 37 points, %d from one of count 37", i, rg.PayloadBytes, cg.PayloadBytes)
				}
				for _, sk := range []struct {
					name string
					r, c *ddsketch.DDSketch
				}{{"pathway latency", rg.PathwayLatency, cg.PathwayLatency}, {"edge latency", rg.EdgeLatency, cg.EdgeLatency}, {"payload size", rg.PayloadSize, cg.PayloadSize}} {
					if r, c := encodeSketch(sk.r), encodeSketch(sk.c); !bytes.Equal(r, c) {
						t.Errorf("bucket %d: %s sketch from 37 points (count %v) differs from one of count 37 (count %v)", i, sk.name, sk.r.GetCount(), sk.c.GetCount())
					}
				}
			}
		})
	}
}
