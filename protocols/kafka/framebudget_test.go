package kafka

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestFrameBudgetBigProduces: a kgo client's produce request of 2.8 MiB (three partitions'
// batches of 900 KiB) is rewritten while the frame budget has room for it, and relayed unread
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
			cl := kgoClient(t, p)
			produceEach(t, ctx, cl, topic, []byte("creates the topic"))
			// One request, as built here: kgo's own batching splits records between requests as
			// its drain happens to find them.
			const parts, perPart = 3, 900
			req := kmsg.NewPtrProduceRequest()
			req.Acks, req.TimeoutMillis = -1, 10000
			rt := kmsg.NewProduceRequestTopic()
			rt.Topic, rt.TopicID = topic, topicID(t, ctx, cl, topic) // v13+ name topics by id
			for i := range parts {
				rp := kmsg.NewProduceRequestTopicPartition()
				rp.Partition, rp.Records = int32(i), buildBatchHeader(t, perPart, 1024, nil, "", nil)
				rt.Partitions = append(rt.Partitions, rp)
			}
			req.Topics = append(req.Topics, rt)
			resp, err := req.RequestWith(ctx, cl)
			if err != nil {
				t.Fatal(err)
			}
			for _, rp := range resp.Topics[0].Partitions {
				if rp.ErrorCode != 0 {
					t.Fatalf("partition %d: error %d", rp.Partition, rp.ErrorCode)
				}
			}
			got := consumeKgo(t, ctx, p, topic, "bigreq-group", 1+parts*perPart)
			if len(got) != 1+parts*perPart {
				t.Fatalf("consumed %d records, want %d", len(got), 1+parts*perPart)
			}
			for _, r := range got {
				if len(r.Value) != 1024 {
					continue // the first
				}
				if has := len(r.Headers) == 1 && r.Headers[0].Key == "dd-pathway-ctx-base64"; has != tc.wantHeader || len(r.Headers) > 1 {
					t.Fatalf("record at %d/%d has headers %v, want a context: %v", r.Partition, r.Offset, r.Headers, tc.wantHeader)
				}
			}
			st := p.Stats()
			skips := p.errs.byName("frame_budget")
			want := uint64(0)
			if !tc.wantHeader {
				want = 1
			}
			if st.UnreadRequests != want || uint64(len(skips)) != want {
				t.Fatalf("UnreadRequests %d, %d frame_budget events; want %d", st.UnreadRequests, len(skips), want)
			}
			// Nothing else was in progress: the request was over the whole budget by itself.
			for _, e := range skips {
				if strings.Contains(e.Message, "taken by other") || !strings.Contains(e.Message, "whole frame_budget_bytes") {
					t.Errorf("frame_budget event %q: want it to say the request alone is over the whole frame_budget_bytes", e.Message)
				}
			}
			waitFor(t, "the frame budget given back", func() bool { return p.frames.Used() == 0 })
		})
	}
}

// TestFrameBudgetStalledRequests: a client that sends half of a big request and stalls holds the
// frame budget for that half (three times it); another whose request outgrows what is left is
// relayed from there as it comes, and gives back what it took once its head is written; closing
// the connections gives the budget back.
func TestFrameBudgetStalledRequests(t *testing.T) {
	c, _ := startCluster(t)
	const size = 3 << 20
	frame := bigProduceFrame(size)
	half := len(frame) / 2
	p := startProxy(t, c, func(cfg *Config) { cfg.FrameBudgetBytes = 3*int64(len(frame)) + 1 })
	var conns []net.Conn
	for i, part := range []int{half, len(frame) * 3 / 4} {
		conn := rawClient(t, p)
		conns = append(conns, conn)
		if _, err := conn.Write(frame[:part]); err != nil {
			t.Fatal(err)
		}
		switch i {
		case 0:
			waitFor(t, "the first request holding what it sent", func() bool { return p.frames.Used() == 3*int64(half) })
		default:
			waitFor(t, "the second request relayed unread, its part given back", func() bool {
				return p.Stats().UnreadRequests == 1 && p.frames.Used() == 3*int64(half)
			})
		}
	}
	if used := p.frames.Used(); used > p.frames.Max {
		t.Fatalf("stalled requests hold %d bytes of a %d-byte budget", used, p.frames.Max)
	}
	// The unread one went on to the broker as far as it came; completing it gets its answer.
	conn := conns[1]
	if _, err := conn.Write(frame[len(frame)*3/4:]); err != nil {
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
	if skips := p.errs.byName("frame_budget"); len(skips) != 1 || !strings.Contains(skips[0].Message, "taken by other requests") {
		t.Errorf("frame_budget events %v: want one that says other requests took the budget", skips)
	}
	waitFor(t, "the frame budget given back", func() bool { return p.frames.Used() == 0 })
}

// TestFrameBudgetRefusedLastRead: a request whose last bytes the frame budget has no room for is
// relayed unread, as one refused part way through is: had it been read and rewritten, its last
// read's bytes (and the copies a rewrite makes of them) would be held outside the budget. One
// connection sends all of a request but its last 16 bytes, another takes what is left of the
// budget but less than three times those, then the first sends them.
func TestFrameBudgetRefusedLastRead(t *testing.T) {
	c, _ := startCluster(t)
	const last, other = 16, 1 << 20
	frame, otherFrame := bigProduceFrame(3<<20), bigProduceFrame(2<<20)
	held := 3 * int64(len(frame)-last)
	p := startProxy(t, c, func(cfg *Config) { cfg.FrameBudgetBytes = held + 3*other + 3*last - 1 })
	conn, otherConn := rawClient(t, p), rawClient(t, p)
	if _, err := conn.Write(frame[:len(frame)-last]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the request held but for its last bytes", func() bool { return p.frames.Used() == held })
	if _, err := otherConn.Write(otherFrame[:other]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other request holding what it sent", func() bool { return p.frames.Used() == held+3*other })
	if _, err := conn.Write(frame[len(frame)-last:]); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := readFrame(conn, DefaultMaxFrameBytes)
	if err != nil {
		t.Fatalf("no answer to the request: %v", err)
	}
	if corr := int32(binary.BigEndian.Uint32(resp[4:])); corr != 7 {
		t.Fatalf("answer's correlation id %d, want 7", corr)
	}
	if n := p.Stats().UnreadRequests; n != 1 {
		t.Errorf("UnreadRequests %d, want 1: the request whose last %d bytes the budget refused was read and rewritten past it", n, last)
	}
	if skips := p.errs.byName("frame_budget"); len(skips) != 1 || !strings.Contains(skips[0].Message, "taken by other requests") {
		t.Errorf("frame_budget events %v: want one that says other requests took the budget", skips)
	}
	waitFor(t, "the answered request's part of the budget given back", func() bool { return p.frames.Used() == 3*other })
	otherConn.Close()
	waitFor(t, "the frame budget given back", func() bool { return p.frames.Used() == 0 })
}

// TestFrameBudgetStalledPrefixes: connections that send the start of a big request and stall
// hold the frame budget for the bytes they sent, not for the size their prefixes claim. Eight of
// them, each claiming 1.25 MiB and sending 100 KiB, leave a kgo producer's batch of 1.2 MiB, sent
// meanwhile, the room to be read and rewritten: its records reach the broker with the pathway
// header, and their produce checkpoints are recorded. (Taken for the claimed sizes, three of them
// took 11.25 MiB of the 14 MiB budget, and the batch went upstream unread, unheaded.) With room for
// only part of the batch, its request is read that far, then relayed from there as it comes:
// every record arrives as sent, without the header.
func TestFrameBudgetStalledPrefixes(t *testing.T) {
	const stalled, sent = 8, 100 << 10 // more than the 64 KiB head any request is read to
	for _, tc := range []struct {
		name     string
		budget   int64
		injected bool
	}{
		{"room left: read and rewritten", 14 << 20, true},
		{"room for part: relayed unread from there", stalled*3*sent + 2<<20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, guard := startCluster(t)
			var biggest atomic.Int64 // the most batch bytes a produce request brought the broker
			c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
				c.KeepControl()
				n := 0
				for _, rt := range req.(*kmsg.ProduceRequest).Topics {
					for _, rp := range rt.Partitions {
						n += len(rp.Records)
					}
				}
				if int64(n) > biggest.Load() { // control functions run one at a time
					biggest.Store(int64(n))
				}
				return nil, nil, false // observe only: the cluster handles the request
			})
			p := startProxy(t, c, func(cfg *Config) { cfg.FrameBudgetBytes, cfg.MaxBatchBytes = tc.budget, 4<<20 })
			answeredLimits(p)

			frame := bigProduceFrame(5 << 18) // 1.25 MiB: three times it fits either budget
			for i := range stalled {
				conn := rawClient(t, p)
				used, unread := p.frames.Used(), p.Stats().UnreadRequests
				if _, err := conn.Write(frame[:sent]); err != nil {
					t.Fatal(err)
				}
				waitFor(t, fmt.Sprintf("stalled request %d read", i+1), func() bool {
					return p.frames.Used() >= used+3*sent || p.Stats().UnreadRequests > unread
				})
			}
			if used := p.frames.Used(); used != stalled*3*sent {
				t.Errorf("%d stalled connections that sent %d bytes each hold %d bytes of the frame budget, want %d", stalled, sent, used, stalled*3*sent)
			}
			unread := p.Stats().UnreadRequests

			ctx := testCtx(t)
			topic := uniqueTopic(t, "stalled-prefixes")
			cl := kgoClient(t, p, kgo.ProducerBatchMaxBytes(2<<20), kgo.ProducerLinger(time.Second),
				kgo.ProducerBatchCompression(kgo.NoCompression()))
			limit := strconv.Itoa(4 << 20)
			if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": &limit}, topic); err != nil {
				t.Fatal(err)
			}
			const records = 12
			value := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, 100<<10) }
			recs := make([]*kgo.Record, records)
			for i := range recs {
				recs[i] = &kgo.Record{Topic: topic, Value: value(i)}
			}
			if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
				t.Fatal(err)
			}
			if b := biggest.Load(); b <= maxReusedFrame {
				t.Fatalf("the biggest produce request brought the broker %d bytes of batches, not the batch over 1 MiB this test is about", b)
			}
			if n, want := p.Stats().UnreadRequests-unread, uint64(btoi(!tc.injected)); n != want {
				t.Errorf("%d requests relayed unread, want %d", n, want)
			}
			for i, r := range readTopic(t, ctx, p, topic, records) {
				if r.Offset != int64(i) || !bytes.Equal(r.Value, value(i)) {
					t.Fatalf("record %d: offset %d, %d bytes, not the %d-byte value sent", i, r.Offset, len(r.Value), len(value(i)))
				}
				if hasContext(r) != tc.injected || len(r.Headers) > btoi(tc.injected) {
					t.Fatalf("record at offset %d has headers %v, want the pathway header: %v", r.Offset, r.Headers, tc.injected)
				}
			}
			if tc.injected {
				waitFor(t, "the batch's produce checkpoints", func() bool {
					return len(pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")) == records
				})
			} else if n := len(pointsOn(p, "direction:out", "topic:"+topic, "type:kafka")); n != 0 {
				t.Errorf("%d produce checkpoints for a batch relayed unread", n)
			}
			guard.check(t)
		})
	}
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
// through fetch responses relayed unobserved. Each is over the whole budget by itself, and its
// line says so: no other frame took the budget, and no wait would change it.
func TestFrameBudgetUnobservedFetches(t *testing.T) {
	c, guard := startCluster(t)
	var logs syncbuf.Buffer
	p := startProxy(t, c, func(cfg *Config) {
		streamAll(cfg)
		cfg.FrameBudgetBytes = 1
		cfg.Log = zerolog.New(&logs)
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
	lines := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		if !strings.Contains(line, "fetch response relayed unobserved") {
			continue
		}
		lines++
		if strings.Contains(line, "taken by other") || !strings.Contains(line, "over the whole frame budget") {
			t.Errorf("want the line to say the response alone is over the whole frame budget: %s", line)
		}
	}
	if lines == 0 {
		t.Error("no line told of a fetch response relayed unobserved")
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
// byte on unchanged but for the preferred read replicas naming a node left out, which both
// clear alike.
func FuzzStreamWalk(f *testing.F) {
	for v := int16(11); v <= 18; v++ {
		for _, brokers := range []bool{false, true} {
			resp := testFetchResponse(v, brokers)
			resp.Topics[0].Partitions[1].PreferredReadReplica = 3 // left out below
			resp.Topics[1].Partitions[2].PreferredReadReplica = 4
			// The walk skips records by their length: a few bytes stand for them. Seeds of
			// 570 bytes took most of make fuzz's 60 s minimizing what the fuzzer found from them.
			for ti := range resp.Topics {
				for pi := range resp.Topics[ti].Partitions {
					part := &resp.Topics[ti].Partitions[pi]
					part.RecordBatches = part.RecordBatches[:len(part.RecordBatches)/10]
				}
			}
			f.Add(v, uint8(3), resp.AppendTo(nil))
		}
	}
	// A five-byte uvarint whose last byte has bits past 32: kbin's walk stops there.
	f.Add(int16(12), uint8(3), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x81, 0x80, 0x80, 0x80, 0x10, 0})
	leftOut := func(id int32) bool { return id%3 == 0 }
	f.Fuzz(func(t *testing.T, v int16, chunk uint8, body []byte) {
		if v < 11 {
			return
		}
		var out bytes.Buffer
		src := &chunkReader{b: body, n: int(chunk)%16 + 1}
		w := newStreamWalk(src, &out, len(body), nil, make([]byte, 64))
		cleared := 0
		ok := walkFetchBody(w, v, func(f []byte) { cleared += clearLeftOutReplica(f, leftOut) })
		want := bytes.Clone(body)
		wantCleared, wantOK := clearLeftOutReplicas(want, v, leftOut)
		if ok != wantOK || cleared != wantCleared {
			t.Fatalf("streamed walk ok=%v cleared %d, in memory ok=%v cleared %d", ok, cleared, wantOK, wantCleared)
		}
		if ok && v >= 12 {
			tail, err := fetchTailStart(body, v)
			if err != nil {
				t.Fatalf("the in-memory walk reached the end, fetchTailStart did not: %v", err)
			}
			if walked := len(body) - w.left - (w.end - w.out); walked != tail {
				t.Fatalf("streamed walk stopped at %d, in memory at %d", walked, tail)
			}
		}
		if err := w.copyRest(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("passed on %d bytes, not the %d expected (equal length: %v)", out.Len(), len(want), out.Len() == len(want))
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

// TestRequestBuffersListed: once a connection that sent a produce request of about 800 KB is idle,
// the buffers it took (the frame read, the spliced batches, the rewritten frame, and for lz4 the
// records decompressed and spliced) are the front's again, not the idle connection's.
func TestRequestBuffersListed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		codec kgo.CompressionCodec
		min   int
	}{
		{"none", kgo.NoCompression(), 3},
		{"lz4", kgo.Lz4Compression(), 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := startCluster(t, kfake.NumBrokers(1))
			p := startProxy(t, c, nil)
			answeredLimits(p)
			ctx := testCtx(t)
			topic := uniqueTopic(t, "buffers")
			// Half random: lz4 halves the batch (kgo sends a batch compression does not shrink
			// uncompressed), and the frame stays over what a connection keeps.
			rng := rand.New(rand.NewPCG(1, 2))
			listed := 0
			for i := range 2 {
				cl := kgoClient(t, p, kgo.ProducerBatchCompression(tc.codec), kgo.ProducerLinger(time.Second))
				recs := make([]*kgo.Record, 800)
				for j := range recs {
					v := make([]byte, 1000)
					for k := range v[:500] {
						v[k] = byte(rng.Uint32())
					}
					recs[j] = &kgo.Record{Topic: topic, Value: v}
				}
				if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					waitFor(t, "the first producer's buffers listed", func() bool { return len(p.bufs.free) >= tc.min })
					listed = len(p.bufs.free)
				} else {
					// It took the frame's three from the list; idle, it lists them again with its own.
					waitFor(t, "the second producer's buffers listed again", func() bool { return len(p.bufs.free) >= listed })
				}
			}
			if st := p.Stats(); st.InjectedRecords < 1600 {
				t.Fatalf("%d records injected, want the 1600 produced", st.InjectedRecords)
			}
		})
	}
}
