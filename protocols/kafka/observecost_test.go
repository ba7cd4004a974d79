package kafka

import (
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/aggregator"
)

// BenchmarkObserveFetch is the observer's cost per fetched record (ns/op is per response of
// 4 partitions x 4 batches x 100 records of 1 KiB, each carrying the header the proxy added at
// produce), folded into a running aggregator as the proxy does. "hot" observes one response
// over and over, as when the observer runs right after the forwarder wrote it; "cold" walks
// 128 MiB of responses, more than any cache, as when it reads what was forwarded long before.
func BenchmarkObserveFetch(b *testing.B) {
	_, spliced := benchBatches(b)
	var batches []byte
	for range 4 {
		batches = append(batches, spliced...)
	}
	resp := kmsg.NewPtrFetchResponse()
	resp.SetVersion(12)
	t := kmsg.NewFetchResponseTopic()
	t.Topic = "bench"
	for pi := range int32(4) {
		pt := kmsg.NewFetchResponseTopicPartition()
		pt.Partition, pt.HighWatermark, pt.LastStableOffset, pt.RecordBatches = pi, 400, 400, batches
		t.Partitions = append(t.Partitions, pt)
	}
	resp.Topics = append(resp.Topics, t)
	frame := resp.AppendTo(nil)
	const records = 4 * 4 * 100

	for _, tc := range []struct {
		name   string
		frames int
	}{{"hot", 1}, {"cold", 128 << 20 / len(frame)}} {
		b.Run(tc.name, func(b *testing.B) {
			agg := aggregator.New(aggregator.Config{})
			agg.Start()
			defer agg.Close()
			p, err := New(Config{Listen: "127.0.0.1:0", Bootstrap: []string{"127.0.0.1:1"}, Log: zerolog.Nop(), Observer: agg})
			if err != nil {
				b.Fatal(err)
			}
			frames := make([][]byte, tc.frames)
			for i := range frames {
				frames[i] = append([]byte(nil), frame...)
			}
			ci := &clientInfo{clientID: "bench-consumer", addr: netip.MustParseAddr("127.0.0.1"), service: "bench-consumer"}
			before := agg.Stats()
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				p.observeFetch(observeJob{frame: frames[i%len(frames)], version: 12, client: ci, at: time.Now()})
				i++
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(i*records), "ns/record")
			st := agg.Stats()
			// With one CPU the aggregator runs only when the observer yields; points it had no
			// room for cost nothing to fold, so a run that dropped any is not comparable.
			b.ReportMetric(float64(st.PointsDropped-before.PointsDropped)/float64(i*records), "dropped/record")
			if got := st.Points + st.PointsDropped - before.Points - before.PointsDropped; got != uint64(i*records) {
				b.Fatalf("%d points for %d records", got, i*records)
			}
		})
	}
}
