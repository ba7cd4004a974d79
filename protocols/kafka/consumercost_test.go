package kafka

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// BenchmarkKgoConsumerDecode is what the header costs a consumer, apart from the proxy: kgo's own
// record decoding (ProcessFetchPartition, as its consumer runs it on every fetched partition) of
// one 100-record batch of 1 KiB records without headers, and of the same batch as the proxy
// forwards it, each record carrying dd-pathway-ctx-base64. make bench's `fetch none` rows read
// the first directly and the second through the proxy.
func BenchmarkKgoConsumerDecode(b *testing.B) {
	bare, spliced := benchBatches(b)
	for _, tc := range []struct {
		name  string
		batch []byte
	}{{"bare", bare}, {"with-header", spliced}} {
		b.Run(tc.name, func(b *testing.B) {
			rp := &kmsg.FetchResponseTopicPartition{HighWatermark: 100, RecordBatches: tc.batch}
			opts := kgo.ProcessFetchPartitionOpts{Topic: "bench"}
			b.SetBytes(int64(len(tc.batch)))
			b.ReportAllocs()
			for b.Loop() {
				fp, _ := kgo.ProcessFetchPartition(opts, rp, kgo.DefaultDecompressor(), nil)
				if len(fp.Records) != 100 || fp.Err != nil {
					b.Fatalf("%d records, %v", len(fp.Records), fp.Err)
				}
				if n := len(fp.Records[99].Headers); n != map[bool]int{true: 1}[tc.name != "bare"] || n == 1 && fp.Records[99].Headers[0].Key != pathway.HeaderKey {
					b.Fatalf("headers %v", fp.Records[99].Headers)
				}
			}
		})
	}
}

// benchBatches returns make bench's batch, 100 records of 1 KiB without headers, and the same
// batch as the proxy forwards it, each record carrying dd-pathway-ctx-base64.
func benchBatches(b *testing.B) (bare, spliced []byte) {
	b.Helper()
	bare = buildBatchHeader(b, 100, 1024, nil, "", nil)
	s := offlineSession(b)
	start, end, _, _, ok := s.injectPartition(s.info.Load(), "bench", 0, bare, true)
	if !ok {
		b.Fatal("the batch did not get the header")
	}
	return bare, append([]byte(nil), s.scratch[start:end]...)
}
