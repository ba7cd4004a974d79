package pathway

import (
	"testing"
	"time"
)

// TestContextBefore1677: a corrupt or forged context from before 1970 loses its timing, also
// before 1677-09-21, where UnixNano wraps: otherwise the point got a 292-year latency, an origin
// before the epoch, and the 1675 pathway start went on downstream.
func TestContextBefore1677(t *testing.T) {
	c := NewCheckpointer("prod", 0)
	now := time.Unix(1642544545, 0)
	// What a header carrying pathway start = edge start = -9300000000000 ms decodes to.
	hdr := Context{Hash: 42, PathwayStart: time.UnixMilli(-9_300_000_000_000), EdgeStart: time.UnixMilli(-9_300_000_000_000)}.String()
	parent, err := DecodeBase64String(hdr)
	if err != nil {
		t.Fatal(err)
	}
	p, ctx := c.Checkpoint(parent, "svc", Edge{Direction: In, Topic: "t", Type: TypeKafka}, 1, now)
	if p.ParentHash != 42 {
		t.Fatalf("parent %d", p.ParentHash)
	}
	if p.PathwayLatency != 0 || p.EdgeLatency != 0 || p.OriginTime() != now.UnixNano() {
		t.Errorf("pre-1970 context (%s) kept its timing: pathway latency %v, edge latency %v, origin %v; want 0, 0, now",
			parent.PathwayStart.UTC().Format(time.RFC3339), time.Duration(p.PathwayLatency), time.Duration(p.EdgeLatency), time.Unix(0, p.OriginTime()).UTC())
	}
	if !ctx.PathwayStart.Equal(now) {
		t.Errorf("context passed downstream starts at %v, want now", ctx.PathwayStart.UTC())
	}
}

// TestOriginUnderClockSkew: dd-trace-go buckets a point's `origin` stats at timestamp -
// pathwayLatency with the unclamped latency (internal/datastreams/processor.go, Processor.add; the
// clamp to 0 applies only to the sketch value, in addToBuckets): always the pathway start, even
// when the clock that started the pathway runs a few ms ahead of this one.
func TestOriginUnderClockSkew(t *testing.T) {
	c := NewCheckpointer("prod", 0)
	t0 := time.Unix(1700000000, 0)                   // a 10 s boundary
	now := t0.Add(9999 * time.Millisecond)           // proxy clock: last ms of window t0
	start := time.UnixMilli(t0.UnixMilli() + 10_002) // producer's clock, 3 ms ahead: window t0+10s
	p, _ := c.Checkpoint(Context{Hash: 7, PathwayStart: start, EdgeStart: start}, "billing",
		Edge{Direction: In, Group: "g", Topic: "orders", Type: TypeKafka}, 10, now)
	if p.OriginTime() != start.UnixNano() {
		t.Errorf("origin time %v, want the pathway start %v (dd-trace-go: timestamp - pathwayLatency)",
			time.Unix(0, p.OriginTime()).UTC(), start.UTC())
	}
}
