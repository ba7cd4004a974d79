package kafka

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// streamAll makes every fetch response stream, holding back only a few bytes.
func streamAll(c *Config) { c.streamFetchMin, c.fetchTailHold = 1, 16 }

// TestStreamedFetch: with every fetch response streamed, kgo (Fetch v16+, tail held back),
// sarama (older versions, nothing held back) and kcat (librdkafka) consume every record with its
// pathway header, the observer still checkpoints them, and no client reaches a broker directly.
func TestStreamedFetch(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, streamAll)
	ctx := testCtx(t)
	topic := uniqueTopic(t, "streamed")
	cl := kgoClient(t, p, kgo.ClientID("stream-producer"), kgo.ProducerBatchCompression(kgo.Lz4Compression()))
	sent := testRecords(60, time.UnixMilli(1700000500000))
	produceKgo(t, ctx, cl, topic, sent)

	checkRecords(t, sent, consumeKgo(t, ctx, p, topic, "g-stream-kgo", len(sent)), wantInjected)
	checkRecords(t, sent, consumeSarama(t, ctx, p, topic, "g-stream-sarama", len(sent)), wantInjected)
	out := runKcat(t, ctx, "", "-C", "-b", p.Addr().String(), "-G", "g-stream-kcat", "-c", fmt.Sprint(len(sent)),
		"-X", "auto.offset.reset=earliest", "-X", "client.id=kcat-consumer", "-f", "%k|%s|%h\n", topic)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != len(sent) {
		t.Fatalf("kcat consumed %d records, want %d:\n%s", len(lines), len(sent), out)
	}
	if st := p.Stats(); st.StreamedFetches == 0 {
		t.Errorf("no fetch response was streamed: %+v", st)
	}
	waitFor(t, "consume checkpoints of three consumers", func() bool { return p.Stats().ConsumedRecords >= uint64(3*len(sent)) })
	guard.check(t)
}

// fetchResponseFrame encodes resp as a broker would send it: size, correlation id, header tags.
func fetchResponseFrame(resp *kmsg.FetchResponse) []byte {
	frame := []byte{0, 0, 0, 0, 0, 0, 0, 7, 0} // size (set below), correlation id 7, no header tags
	frame = resp.AppendTo(frame)
	putSize(frame)
	return frame
}

func testFetchResponse(version int16, brokers bool) *kmsg.FetchResponse {
	resp := kmsg.NewPtrFetchResponse()
	resp.Version = version
	resp.ThrottleMillis = 3
	for ti := 0; ti < 2; ti++ {
		topic := kmsg.NewFetchResponseTopic()
		topic.Topic = fmt.Sprintf("topic-%d", ti)
		topic.TopicID = [16]byte{byte(ti + 1)}
		for pi := 0; pi < 3; pi++ {
			part := kmsg.NewFetchResponseTopicPartition()
			part.Partition = int32(pi)
			part.HighWatermark = 100
			part.RecordBatches = []byte(strings.Repeat("r", 40*pi))
			if pi == 1 {
				part.ErrorCode = 6
				part.CurrentLeader.LeaderID = 2
				part.CurrentLeader.LeaderEpoch = 9
				abort := kmsg.NewFetchResponseTopicPartitionAbortedTransaction()
				abort.ProducerID, abort.FirstOffset = 11, 12
				part.AbortedTransactions = append(part.AbortedTransactions, abort)
			}
			topic.Partitions = append(topic.Partitions, part)
		}
		resp.Topics = append(resp.Topics, topic)
	}
	if brokers {
		b := kmsg.NewFetchResponseBroker()
		b.NodeID, b.Host, b.Port = 2, "broker-2.internal.example", 9092
		resp.Brokers = append(resp.Brokers, b)
	}
	return resp
}

// TestFetchTailStart: the length-only walker finds the top-level tagged fields where kmsg's own
// encoding puts them, for every flexible Fetch version, with and without node endpoints.
func TestFetchTailStart(t *testing.T) {
	for v := int16(12); v <= (&kmsg.FetchResponse{}).MaxVersion(); v++ {
		plain := fetchResponseFrame(testFetchResponse(v, false))
		want := len(plain) - 1 - 9 // the tag count byte, relative to the body
		for _, brokers := range []bool{false, true} {
			frame := fetchResponseFrame(testFetchResponse(v, brokers))
			got, err := fetchTailStart(frame[9:], v)
			if err != nil || got != want {
				t.Errorf("v%d brokers=%v: tail at %d, %v; want %d", v, brokers, got, err, want)
				continue
			}
			at, err := nodeEndpointsTag(frame[9+got:])
			if err != nil || (at >= 0) != brokers {
				t.Errorf("v%d brokers=%v: node endpoints tag at %d, %v", v, brokers, at, err)
			}
		}
		if _, err := fetchTailStart(plain[9:len(plain)-3], v); err == nil {
			t.Errorf("v%d: truncated response walked without error", v)
		}
	}
}

// TestFetchTailHidesEndpoints: streamed, the node endpoints become an unknown tag clients skip;
// when they lie before the held-back bytes the connection is refused rather than leak them.
func TestFetchTailHidesEndpoints(t *testing.T) {
	s := offlineSession(t)
	pd := &pending{key: keyFetch, version: 16, flexible: true}
	frame := fetchResponseFrame(testFetchResponse(16, true))
	if err := s.fetchTail(pd, frame, len(frame)-1); err == nil {
		t.Fatal("endpoints before the held-back bytes were not refused")
	}
	if err := s.fetchTail(pd, frame, len(frame)-40); err != nil {
		t.Fatal(err)
	}
	resp := kmsg.NewPtrFetchResponse()
	resp.Version = 16
	if err := resp.ReadFrom(frame[9:]); err != nil {
		t.Fatal(err)
	}
	if len(resp.Brokers) != 0 || len(resp.Topics) != 2 || resp.Topics[0].Partitions[1].CurrentLeader.LeaderEpoch != 9 {
		t.Errorf("after hiding: %d brokers, %d topics", len(resp.Brokers), len(resp.Topics))
	}
	if s.p.Stats().HiddenEndpoints != 1 {
		t.Errorf("hidden endpoints not counted")
	}
}

// FuzzFetchTail: the length-only walker never panics, loops or points outside the body. (Its
// agreement with kmsg is TestFetchTailStart's: kmsg itself allocates by the counts it reads, so
// hostile counts make it, not the walker, the slow part of a fuzz run.)
func FuzzFetchTail(f *testing.F) {
	for v := int16(12); v <= 18; v++ {
		for _, brokers := range []bool{false, true} {
			// The walk skips records by their length, so a few bytes stand for them: a seed of
			// hundreds of bytes spends a short run minimizing what the fuzzer finds from it.
			resp := testFetchResponse(v, brokers)
			for ti := range resp.Topics {
				for pi := range resp.Topics[ti].Partitions {
					part := &resp.Topics[ti].Partitions[pi]
					part.RecordBatches = part.RecordBatches[:len(part.RecordBatches)/10]
				}
			}
			f.Add(v, fetchResponseFrame(resp)[9:])
		}
	}
	f.Fuzz(func(t *testing.T, v int16, body []byte) {
		tail, err := fetchTailStart(body, v)
		if err != nil {
			return
		}
		if tail < 0 || tail > len(body) {
			t.Fatalf("tail %d outside %d bytes", tail, len(body))
		}
		if at, _ := nodeEndpointsTag(body[tail:]); at >= len(body)-tail {
			t.Fatalf("tag at %d outside %d tail bytes", at, len(body)-tail)
		}
	})
}

// TestFetchFramePool: frames come back for reuse only up to the size bound and the pool's
// capacity, and a pooled frame too small for a response is replaced, not returned short.
func TestFetchFramePool(t *testing.T) {
	p := offlineSession(t).p
	a := p.getFetchFrame(1000)
	p.putFetchFrame(a)
	if b := p.getFetchFrame(900); len(b) != 900 || &b[0] != &a[0] {
		t.Errorf("a returned frame was not reused (len %d)", len(b))
	}
	p.putFetchFrame(a)
	if b := p.getFetchFrame(2000); len(b) != 2000 {
		t.Errorf("got %d bytes for a 2000-byte response", len(b))
	}
	p.putFetchFrame(make([]byte, maxPooledFetchFrame+1))
	for i := 0; i < pooledFetchFrames+2; i++ {
		p.putFetchFrame(make([]byte, 10))
	}
	if n := len(p.fetchBufs); n != pooledFetchFrames {
		t.Errorf("%d frames pooled, want %d", n, pooledFetchFrames)
	}
	for len(p.fetchBufs) > 0 {
		if b := <-p.fetchBufs; cap(b) > maxPooledFetchFrame {
			t.Errorf("a frame of %d bytes was pooled", cap(b))
		}
	}
}
