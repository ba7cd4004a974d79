package errtrack

import (
	"fmt"
	"testing"
	"time"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// fullCollector is a collector at its bounds: MaxFingerprints open groups and maxRetiredEdges
// retired edges, as a long run of varied errors leaves it.
func fullCollector(tb testing.TB) *Collector {
	tb.Helper()
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	now := t0
	c := New(Config{Clock: func() time.Time { return now }})
	lost := func(i int, at time.Time) Event {
		return Event{Time: at, Category: LostMessage, Protocol: "kafka", Operation: "Produce", Code: 10,
			Name: "MESSAGE_TOO_LARGE", Service: "billing", Partition: int32(i % 7), Messages: 1,
			Edge: pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: fmt.Sprintf("topic-%d", i)}}
	}
	// Retire edges in rounds of MaxFingerprints groups, each dropped after Retain.
	for i := 0; i < maxRetiredEdges; {
		for j := 0; j < DefaultMaxFingerprints && i < maxRetiredEdges; j, i = j+1, i+1 {
			c.Report(lost(i, now))
		}
		now = now.Add(DefaultRetain + time.Minute)
		c.Close(now)
	}
	for i := 0; i < DefaultMaxFingerprints; i++ {
		c.Report(lost(maxRetiredEdges+i, now))
	}
	if len(c.retired) != maxRetiredEdges || len(c.groups) != DefaultMaxFingerprints {
		tb.Fatalf("retired %d, groups %d: not at the bounds", len(c.retired), len(c.groups))
	}
	return c
}

// BenchmarkSnapshotFull: a /errors or /metrics scrape of a full collector; the lock Report
// takes on the data path is held for part of it.
func BenchmarkSnapshotFull(b *testing.B) {
	c := fullCollector(b)
	b.ReportAllocs()
	for b.Loop() {
		_ = c.Snapshot()
	}
}

// BenchmarkReportDuringSnapshot: Report on the data path while another goroutine scrapes a full
// collector without pause. worst-ns/op is the longest single Report: what a scrape can add to a
// connection that reports an error at that moment.
func BenchmarkReportDuringSnapshot(b *testing.B) {
	c := fullCollector(b)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				_ = c.Snapshot()
			}
		}
	}()
	e := Event{Category: BrokerError, Protocol: "kafka", Operation: "Produce", Code: 6,
		Name: "NOT_LEADER_OR_FOLLOWER", Service: "billing", Partition: 1, Time: time.Now(),
		Edge: pathway.Edge{Direction: pathway.Out, Type: pathway.TypeKafka, Topic: "orders"}}
	var worst time.Duration
	for b.Loop() {
		t0 := time.Now()
		c.Report(e)
		worst = max(worst, time.Since(t0))
	}
	close(stop)
	<-done
	b.ReportMetric(float64(worst.Nanoseconds()), "worst-ns/op")
}

// BenchmarkCloseFull: the interval's close at the bounds, under the lock Report takes, every
// Interval (10 s by default).
func BenchmarkCloseFull(b *testing.B) {
	c := fullCollector(b)
	now := c.now()
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for g := range c.groups { // every group active in the interval, as in a storm of varied errors
			c.groups[g].count = 1
		}
		b.StartTimer()
		_ = c.Close(now)
	}
}
