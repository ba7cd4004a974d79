package kafka

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestFrameBudgetBigProduces: kgo produce requests of about 2.7 MiB (three partitions' batches of
// 900 KiB, to the one broker) are rewritten while the frame budget has room for them, and relayed unread
// when it has none, with every record delivered either way.
func TestFrameBudgetBigProduces(t *testing.T) {
	for _, tc := range []struct {
		name       string
		budget     int64
		wantHeader bool
	}{
		{"default budget: rewritten", 0, true},
		{"no room: relayed unread", 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := startCluster(t, kfake.NumBrokers(1))
			p := startProxy(t, c, func(cfg *Config) { cfg.FrameBudgetBytes = tc.budget })
			answeredLimits(p)
			ctx := testCtx(t)
			topic := uniqueTopic(t, "bigreq")
			const parts, perPart = 3, 900
			// Uncompressed, so that requests keep the size of their records. Manual flushing: every partition's records wait, so that the broker gets one
			// request holding the batches of all partitions.
			cl := kgoClient(t, p, kgo.ManualFlushing(), kgo.RecordPartitioner(kgo.ManualPartitioner()),
				kgo.MaxBufferedRecords(parts*perPart+1), kgo.ProducerBatchCompression(kgo.NoCompression()))
			// One record a partition first, so that all partitions' leaders are known when the
			// flush drains them (the context it gets, or not, is not checked).
			for i := range parts {
				cl.Produce(ctx, &kgo.Record{Topic: topic, Partition: int32(i), Key: []byte("warm")}, func(_ *kgo.Record, err error) {
					if err != nil {
						t.Errorf("warm-up record: %v", err)
					}
				})
			}
			if err := cl.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			var mu sync.Mutex
			var errs []error
			for i := range parts * perPart {
				wg.Add(1)
				r := &kgo.Record{Topic: topic, Partition: int32(i % parts), Value: bytes.Repeat([]byte{byte(i)}, 1024),
					Key: fmt.Appendf(nil, "k%d", i)}
				cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
					defer wg.Done()
					if err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
				})
			}
			if err := cl.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			if len(errs) > 0 {
				t.Fatalf("%d records failed, first: %v", len(errs), errs[0])
			}
			got := consumeKgo(t, ctx, p, topic, "bigreq-group", parts*perPart+parts)
			if len(got) != parts*perPart+parts {
				t.Fatalf("consumed %d records, want %d", len(got), parts*perPart+parts)
			}
			seen := map[string]bool{}
			for _, r := range got {
				if string(r.Key) == "warm" {
					continue
				}
				has := false
				for _, h := range r.Headers {
					has = has || h.Key == "dd-pathway-ctx-base64"
				}
				if has != tc.wantHeader {
					t.Fatalf("record %s carries a context: %v, want %v", r.Key, has, tc.wantHeader)
				}
				if len(r.Value) != 1024 || seen[string(r.Key)] {
					t.Fatalf("record %s: %d-byte value, seen before: %v", r.Key, len(r.Value), seen[string(r.Key)])
				}
				seen[string(r.Key)] = true
			}
			st := p.Stats()
			skips := p.errs.byName("frame_budget")
			if tc.wantHeader {
				if st.UnreadRequests != 0 || len(skips) != 0 {
					t.Fatalf("UnreadRequests %d, %d frame_budget events with the default budget", st.UnreadRequests, len(skips))
				}
			} else if st.UnreadRequests == 0 || uint64(len(skips)) != st.UnreadRequests {
				t.Fatalf("UnreadRequests %d, %d frame_budget events: want each unread request counted and reported", st.UnreadRequests, len(skips))
			}
			waitFor(t, "the frame budget given back", func() bool { return p.frames.Used() == 0 })
		})
	}
}

// TestFrameBudgetStalledRequests: clients that send half of a big request and stall hold at most
// the frame budget together; the request past it is relayed as it comes, and closing the
// connections gives the budget back.
func TestFrameBudgetStalledRequests(t *testing.T) {
	c, _ := startCluster(t)
	const size = 3 << 20
	frame := bigProduceFrame(size)
	p := startProxy(t, c, func(cfg *Config) { cfg.FrameBudgetBytes = 2*int64(len(frame)) + 1 })
	var conns []net.Conn
	for i := range 3 {
		conn := rawClient(t, p)
		conns = append(conns, conn)
		if _, err := conn.Write(frame[:len(frame)/2]); err != nil {
			t.Fatal(err)
		}
		switch i {
		case 0:
			waitFor(t, "the first request taking the budget", func() bool { return p.frames.Used() == 2*int64(len(frame)) })
		default:
			waitFor(t, fmt.Sprintf("request %d relayed unread", i+1), func() bool { return p.Stats().UnreadRequests == uint64(i) })
		}
	}
	if used := p.frames.Used(); used > p.frames.Max {
		t.Fatalf("stalled requests hold %d bytes of a %d-byte budget", used, p.frames.Max)
	}
	// The unread ones went on to the broker as far as they came; completing one gets its answer.
	conn := conns[2]
	if _, err := conn.Write(frame[len(frame)/2:]); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := readFrame(conn, DefaultMaxFrameBytes)
	if err != nil {
		t.Fatalf("no answer to the request relayed unread: %v", err)
	}
	if corr := int32(resp[4])<<24 | int32(resp[5])<<16 | int32(resp[6])<<8 | int32(resp[7]); corr != 7 {
		t.Fatalf("answer's correlation id %d, want 7", corr)
	}
	for _, conn := range conns {
		conn.Close()
	}
	waitFor(t, "the frame budget given back", func() bool { return p.frames.Used() == 0 })
}

// bigProduceFrame is a Produce v7 request (correlation id 7, acks -1) of about size bytes. Its
// records are zeros, which the broker refuses in its answer: the test needs an answer, not a write.
func bigProduceFrame(size int) []byte {
	req := kmsg.NewPtrProduceRequest()
	req.Version, req.Acks, req.TimeoutMillis = 7, -1, 10000
	rt := kmsg.NewProduceRequestTopic()
	rt.Topic = "stalled"
	rp := kmsg.NewProduceRequestTopicPartition()
	rp.Records = make([]byte, size)
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	return requestFrame(req, 7)
}

// TestFrameBudgetUnobservedFetches: with no room in the frame budget, kgo (Fetch v16+: walked for
// node endpoints), sarama (older versions) and kcat consume every record, with its header,
// through fetch responses relayed unobserved.
func TestFrameBudgetUnobservedFetches(t *testing.T) {
	c, guard := startCluster(t)
	p := startProxy(t, c, func(cfg *Config) {
		streamAll(cfg)
		cfg.FrameBudgetBytes = 1
	})
	ctx := testCtx(t)
	topic := uniqueTopic(t, "unobserved")
	cl := kgoClient(t, p, kgo.ProducerBatchCompression(kgo.Lz4Compression()))
	sent := testRecords(60, time.UnixMilli(1700000500000))
	produceKgo(t, ctx, cl, topic, sent)

	checkRecords(t, sent, consumeKgo(t, ctx, p, topic, "g-unobserved-kgo", len(sent)), wantInjected)
	checkRecords(t, sent, consumeSarama(t, ctx, p, topic, "g-unobserved-sarama", len(sent)), wantInjected)
	out := runKcat(t, ctx, "", "-C", "-b", p.Addr().String(), "-G", "g-unobserved-kcat", "-c", fmt.Sprint(len(sent)),
		"-X", "auto.offset.reset=earliest", "-f", "%k|%s|%h\n", topic)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != len(sent) {
		t.Fatalf("kcat consumed %d records, want %d:\n%s", len(lines), len(sent), out)
	}
	st := p.Stats()
	if st.UnobservedFetches == 0 || st.ConsumedRecords != 0 {
		t.Fatalf("UnobservedFetches %d, ConsumedRecords %d: want fetches relayed unobserved, none checkpointed", st.UnobservedFetches, st.ConsumedRecords)
	}
	if used := p.frames.Used(); used != 0 {
		t.Fatalf("frame budget holds %d bytes after the fetches", used)
	}
	guard.check(t)
}

// TestRelayUnobserved: a Fetch response walked as it passes, through a buffer smaller than its
// records and read a few bytes at a time, reaches the client byte for byte, but for node
// endpoints hidden on v16+.
func TestRelayUnobserved(t *testing.T) {
	for v := int16(4); v <= (&kmsg.FetchResponse{}).MaxVersion(); v++ {
		for _, brokers := range []bool{false, true} {
			if brokers && v < 16 {
				continue
			}
			resp := testFetchResponse(v, brokers)
			resp.Topics[1].Partitions[2].RecordBatches = bytes.Repeat([]byte("big"), 100<<10)
			frame := []byte{0, 0, 0, 0, 0, 0, 0, 7}
			if v >= 12 {
				frame = append(frame, 0) // header tags
			}
			frame = resp.AppendTo(frame)
			putSize(frame)
			want := bytes.Clone(frame)
			s := offlineSession(t)
			pd := &pending{key: keyFetch, version: v, flexible: v >= 12}
			if brokers {
				if err := s.fetchTail(pd, want, 0); err != nil {
					t.Fatal(err)
				}
			}
			up, upPeer := net.Pipe()
			cl, clPeer := net.Pipe()
			s.c = &proxy.Conn{Client: cl, Upstream: up}
			go func() {
				for rest := frame[8:]; len(rest) > 0; {
					k := min(len(rest), 7)
					if _, err := upPeer.Write(rest[:k]); err != nil {
						return
					}
					rest = rest[k:]
				}
			}()
			got := make(chan []byte, 1)
			go func() {
				b := make([]byte, len(frame))
				n, _ := io.ReadFull(clPeer, b)
				got <- b[:n]
			}()
			if err := s.relayUnobserved(pd, [8]byte(frame[:8]), len(frame)-4); err != nil {
				t.Fatalf("v%d brokers=%v: %v", v, brokers, err)
			}
			if b := <-got; !bytes.Equal(b, want) {
				t.Fatalf("v%d brokers=%v: the client got %d bytes, not the %d expected (equal length: %v)", v, brokers, len(b), len(want), len(b) == len(want))
			}
			if hidden := s.p.Stats().HiddenEndpoints; hidden != uint64(2*btoi(brokers)) { // fetchTail's and the relay's
				t.Fatalf("v%d brokers=%v: HiddenEndpoints %d", v, brokers, hidden)
			}
			up.Close()
			upPeer.Close()
			cl.Close()
			clPeer.Close()
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// FuzzStreamWalk: walking a body as it streams, through a small buffer and short reads, agrees
// with the in-memory walk on whether and where it reaches the tagged fields, and passes every
// byte on unchanged.
func FuzzStreamWalk(f *testing.F) {
	for v := int16(12); v <= 18; v++ {
		for _, brokers := range []bool{false, true} {
			f.Add(v, uint8(3), fetchResponseFrame(testFetchResponse(v, brokers))[9:])
		}
	}
	f.Fuzz(func(t *testing.T, v int16, chunk uint8, body []byte) {
		if v < 12 {
			return
		}
		var out bytes.Buffer
		src := &chunkReader{b: body, n: int(chunk)%16 + 1}
		w := newStreamWalk(src, &out, len(body), nil, make([]byte, 64))
		ok := walkFetchBody(w, v)
		want, err := fetchTailStart(body, v)
		if ok != (err == nil) {
			t.Fatalf("streamed walk ok=%v, in memory: %v", ok, err)
		}
		if ok {
			if walked := len(body) - w.left - (w.end - w.out); walked != want {
				t.Fatalf("streamed walk stopped at %d, in memory at %d", walked, want)
			}
		}
		if err := w.copyRest(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), body) {
			t.Fatalf("passed on %d bytes, not the %d read", out.Len(), len(body))
		}
	})
}

// chunkReader reads b at most n bytes at a time.
type chunkReader struct {
	b []byte
	n int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), r.n)], r.b)
	r.b = r.b[k:]
	return k, nil
}
