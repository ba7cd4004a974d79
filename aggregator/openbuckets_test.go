package aggregator

import (
	"testing"
	"time"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestOriginBucketUnderClockSkew: a consume whose parent context started in window t0+10s (the
// producer's clock 3 ms ahead of the proxy's) goes to origin bucket t0+10s, the pathway start's
// window, with the producer's own point, as dd-trace-go buckets it (Processor.add); its pathway
// latency counts as 0.
func TestOriginBucketUnderClockSkew(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	c := pathway.NewCheckpointer("prod", 0)
	start := time.UnixMilli(t0.UnixMilli() + 10_002)
	p, _ := c.Checkpoint(pathway.Context{Hash: 7, PathwayStart: start, EdgeStart: start}, "billing",
		pathway.Edge{Direction: pathway.In, Group: "g", Topic: "orders", Type: pathway.TypeKafka}, 10, t0.Add(9999*time.Millisecond))
	a := New(Config{})
	a.Add(p)
	var origin *Bucket
	bs := a.Flush(t0.Add(time.Minute), true)
	for i := range bs {
		if bs[i].TimestampType == Origin {
			origin = &bs[i]
		}
	}
	if origin == nil {
		t.Fatal("no origin bucket")
	}
	if want := t0.Add(10 * time.Second); !origin.Start.Equal(want) {
		t.Errorf("origin bucket starts %v, want %v (the pathway start's window)", origin.Start.UTC(), want.UTC())
	}
	for _, g := range origin.Groups {
		if n := g.PathwayLatency.GetCount(); n != 1 || g.PathwayLatency.GetZeroCount() != 1 {
			t.Errorf("pathway latency sketch: %v values, %v of them zero; want the one, as 0", n, g.PathwayLatency.GetZeroCount())
		}
	}
}

// TestOpenBucketsBoundedByMaxGroups: clients choose the pathway start in the contexts they send,
// so the origin windows of their points. Once MaxGroups is reached, a point refused a group must
// not leave an empty bucket behind until the next flush (about 130 bytes each).
func TestOpenBucketsBoundedByMaxGroups(t *testing.T) {
	const maxGroups = 10
	a := New(Config{MaxGroups: maxGroups})
	now := time.Unix(1700000000, 0)
	tags := []string{"direction:in", "topic:t", "type:kafka"}
	for i := 0; i < 10000; i++ {
		a.Add(pathway.Point{Service: "s", EdgeTags: tags, Hash: 1, ParentHash: 2, Time: now.UnixNano(),
			PathwayLatency: int64(i+1) * int64(10*time.Second)})
		if i%1000 == 0 {
			a.drain()
		}
	}
	a.drain()
	st := a.Stats()
	if st.OpenBuckets > maxGroups {
		t.Errorf("%d buckets open with MaxGroups %d (%d points refused a group): empty buckets are kept",
			st.OpenBuckets, maxGroups, st.GroupsRefused)
	}
}

// TestOpenBucketsBoundedByMaxBacklogs: the same for offsets refused once MaxBacklogs are held.
func TestOpenBucketsBoundedByMaxBacklogs(t *testing.T) {
	const maxBacklogs = 10
	a := New(Config{MaxBacklogs: maxBacklogs})
	now := time.Unix(1700000000, 0)
	for i := 0; i < 1000; i++ {
		a.Offset(pathway.Offset{Kind: pathway.KafkaCommit, Service: "s", Group: "g", Topic: "t", Partition: int32(i),
			Value: 1, Time: now.Add(time.Duration(i) * 10 * time.Second).UnixNano()})
	}
	a.drain()
	if st := a.Stats(); st.OpenBuckets > maxBacklogs {
		t.Errorf("%d buckets open with MaxBacklogs %d (%d offsets refused)", st.OpenBuckets, maxBacklogs, st.OffsetsRefused)
	}
}
