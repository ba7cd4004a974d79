package kafka

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

func compressor(t testing.TB, c kgo.CompressionCodec) kgo.Compressor {
	comp, err := kgo.DefaultCompressor(c)
	if err != nil {
		t.Fatal(err)
	}
	return comp
}

// rewrite runs a produce frame through an offline session and returns what goes upstream.
func rewrite(t testing.TB, s *session, frame []byte) []byte {
	t.Helper()
	h, err := parseRequestHeader(frame)
	if err != nil {
		t.Fatal(err)
	}
	pd := &pending{corr: h.CorrID, key: h.Key, version: h.Version}
	out, _ := s.produceRequest(h, frame, pd)
	return out
}

// checkInjected compares the records of orig and out: same headers plus exactly one pathway
// header each; batch fields other than length and CRC unchanged.
func checkInjected(t *testing.T, name string, orig, out []byte) {
	t.Helper()
	before, after := decodeProduced(t, orig), decodeProduced(t, out)
	if len(before) != len(after) {
		t.Fatalf("%s: %d records became %d", name, len(before), len(after))
	}
	for i := range before {
		var rest []kmsg.Header
		n := 0
		for _, h := range after[i] {
			if h.Key == pathway.HeaderKey {
				n++
				if _, err := pathway.DecodeBase64(h.Value); err != nil {
					t.Errorf("%s record %d: header does not decode: %v", name, i, err)
				}
				continue
			}
			rest = append(rest, h)
		}
		if n != 1 || len(rest) != len(before[i]) {
			t.Errorf("%s record %d: %d pathway headers, headers %v -> %v", name, i, n, before[i], after[i])
		}
	}
}

func TestGoldenInject(t *testing.T) {
	for name, frame := range goldenProduces(t) {
		s := offlineSession(t)
		h, _ := parseRequestHeader(frame)
		var v produceRequestView
		if err := parseProduce(h, frame, &v); err != nil {
			t.Fatal(err)
		}
		for _, p := range v.parts {
			s.p.topics.put(p.topicID, "golden") // v13 fixtures name the topic by id
		}
		out := rewrite(t, s, frame)
		if bytes.Equal(out, frame) {
			t.Errorf("%s: nothing injected", name)
			continue
		}
		checkInjected(t, name, frame, out)
		// Batch header fields other than length and CRC are unchanged.
		var w produceRequestView
		oh, _ := parseRequestHeader(out)
		if err := parseProduce(oh, out, &w); err != nil {
			t.Fatal(err)
		}
		for i := range v.parts {
			a, b := frame[v.parts[i].recStart:], out[w.parts[i].recStart:]
			if !bytes.Equal(a[:8], b[:8]) || !bytes.Equal(a[12:17], b[12:17]) || !bytes.Equal(a[21:61], b[21:61]) {
				t.Errorf("%s partition %d: batch header changed", name, i)
			}
		}
	}
}

func TestInjectCodecs(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    kgo.Compressor
	}{{"none", nil}, {"gzip", compressor(t, kgo.GzipCompression())}, {"snappy", compressor(t, kgo.SnappyCompression())},
		{"lz4", compressor(t, kgo.Lz4Compression())}, {"zstd", compressor(t, kgo.ZstdCompression())}} {
		for _, version := range []int16{3, 8, 9, 12} {
			frame := produceFrame(version, "t", buildBatch(t, 50, 100, tc.c), buildBatch(t, 3, 10, tc.c))
			s := offlineSession(t)
			out := rewrite(t, s, frame)
			checkInjected(t, tc.name, frame, out)
		}
	}
}

// TestInjectXerialSnappy: Java producers (snappy-java) write xerial-framed snappy; the batch is
// read and re-encoded as a raw snappy block, which every consumer reads.
func TestInjectXerialSnappy(t *testing.T) {
	snappy := compressor(t, kgo.SnappyCompression())
	b := buildBatch(t, 5, 20, nil)
	raw := b[61:]
	var buf bytes.Buffer
	block, _ := snappy.Compress(&buf, raw)
	x := []byte{0x82, 'S', 'N', 'A', 'P', 'P', 'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1}
	x = binary.BigEndian.AppendUint32(x, uint32(len(block)))
	x = append(x, block...)
	nb := append(append([]byte(nil), b[:61]...), x...)
	binary.BigEndian.PutUint32(nb[8:], uint32(len(nb)-12))
	binary.BigEndian.PutUint16(nb[21:], 2)
	binary.BigEndian.PutUint32(nb[17:], crc32.Checksum(nb[21:], castagnoli))
	frame := produceFrame(9, "t", nb)
	checkInjected(t, "xerial", frame, rewrite(t, offlineSession(t), frame))
}

func TestInjectSkips(t *testing.T) {
	good := buildBatch(t, 3, 10, nil)
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	control := mod(func(b []byte) []byte {
		binary.BigEndian.PutUint16(b[21:], 0x20)
		binary.BigEndian.PutUint32(b[17:], crc32.Checksum(b[21:], castagnoli))
		return b
	})
	for _, tc := range []struct {
		name, reason string
		batch        []byte
		max          int
	}{
		{"control", skipControl, control, 0},
		{"bad crc", skipBadCRC, mod(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), 0},
		{"legacy magic", skipLegacyMagic, mod(func(b []byte) []byte { b[16] = 1; return b }), 0},
		{"unknown codec", skipUnknownCodec, mod(func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[21:], 5)
			binary.BigEndian.PutUint32(b[17:], crc32.Checksum(b[21:], castagnoli))
			return b
		}), 0},
		{"truncated", skipMalformed, good[:len(good)-5], 0},
		{"size limit", skipSizeLimit, good, len(good) + 10},
	} {
		c := newKgoCodec(DefaultMaxBatchBytes)
		if tc.max > 0 {
			c.maxBatchBytes = tc.max
		}
		out, changed, reason, err := c.Inject(nil, tc.batch, func(batchMeta, *recordMeta) []byte { return []byte("ctx") })
		if changed || reason != tc.reason || err != nil || out != nil {
			t.Errorf("%s: changed=%v reason=%q err=%v, want reason %q", tc.name, changed, reason, err, tc.reason)
		}
		// A malformed batch's skip event says what was wrong with it.
		if cause := c.Malformed(); (reason == skipMalformed) != (cause != nil) {
			t.Errorf("%s: malformed cause %v for reason %q", tc.name, cause, reason)
		}
	}
	// Each way a batch can be malformed has its own cause.
	good3 := buildBatch(t, 3, 10, nil)
	badRecord := append([]byte(nil), good3...)
	badRecord[61] = 0x7f // the first record's length varint: 63, past the records
	binary.BigEndian.PutUint32(badRecord[17:], crc32.Checksum(badRecord[21:], castagnoli))
	for _, tc := range []struct {
		name, want string
		records    []byte
	}{
		{"short tail", "fewer than a batch header", append(append([]byte(nil), good3...), 1, 2, 3)},
		{"truncated", "batch length", good3[:len(good3)-5]},
		{"bad record", "records:", badRecord},
	} {
		c := newKgoCodec(DefaultMaxBatchBytes)
		_, _, reason, _ := c.Inject(nil, tc.records, func(batchMeta, *recordMeta) []byte { return []byte("ctx") })
		if cause := c.Malformed(); reason != skipMalformed || cause == nil || !strings.Contains(cause.Error(), tc.want) {
			t.Errorf("%s: reason %q, cause %v, want one with %q", tc.name, reason, cause, tc.want)
		}
	}
}

func BenchmarkProduceRewrite(b *testing.B) {
	for _, tc := range []struct {
		name string
		c    kgo.CompressionCodec
	}{{"none", kgo.NoCompression()}, {"lz4", kgo.Lz4Compression()}} {
		b.Run(tc.name+"/100x1KiB", func(b *testing.B) {
			var comp kgo.Compressor
			if tc.name != "none" {
				comp = compressor(b, tc.c)
			}
			batch := buildBatch(b, 100, 1024, comp)
			frame := produceFrame(9, "bench", batch)
			s := offlineSession(b)
			h, _ := parseRequestHeader(frame)
			pd := &pending{}
			b.SetBytes(int64(100 * 1024))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				out, _ := s.produceRequest(h, frame, pd)
				if len(out) <= len(frame) {
					b.Fatal("not injected")
				}
				// The broker's answer hands the checkpoints over, as before it came.
				for i := range pd.facts.(*produceFacts).parts {
					s.releasePoints(&pd.facts.(*produceFacts).parts[i], true)
				}
				s.settle(pd)
				pd.facts = nil
			}
		})
	}
}

// contextBatch is a batch of n records that all carry a pathway context already.
func contextBatch(t testing.TB, n int, codec kgo.Compressor) []byte {
	t.Helper()
	ctx := pathway.Context{Hash: 42, PathwayStart: time.UnixMilli(1700000000000)}.AppendBase64(nil)
	return buildBatchHeader(t, n, 100, codec, pathway.HeaderKey, ctx)
}

// TestInjectAllExistingContext: a batch whose every record already carries a context goes
// upstream byte for byte, alone or next to a batch that gets headers, also on a session whose
// buffers hold earlier requests (an empty splice result once replaced such a batch with nothing).
func TestInjectAllExistingContext(t *testing.T) {
	for _, name := range []string{"none", "lz4"} {
		var comp kgo.Compressor
		if name == "lz4" {
			comp = compressor(t, kgo.Lz4Compression())
		}
		s := offlineSession(t)
		for round := 0; round < 3; round++ {
			own := contextBatch(t, 5, comp)
			frame := produceFrame(9, "t", own)
			if out := rewrite(t, s, frame); !bytes.Equal(out, frame) {
				t.Errorf("%s round %d: frame with only instrumented records changed: %d -> %d bytes", name, round, len(frame), len(out))
			}
			mixed := produceFrame(9, "t", own, buildBatch(t, 4, 100, comp))
			out := rewrite(t, s, mixed)
			before, after := decodeProduced(t, mixed), decodeProduced(t, out)
			if len(before) != 9 || len(after) != 9 {
				t.Fatalf("%s round %d: %d records became %d", name, round, len(before), len(after))
			}
			for i := range after {
				n := 0
				for _, h := range after[i] {
					if h.Key == pathway.HeaderKey {
						n++
					}
				}
				if n != 1 {
					t.Errorf("%s round %d record %d: %d pathway headers", name, round, i, n)
				}
			}
		}
		if st := s.p.Stats(); st.ExistingContext != 3*10 || st.InjectedRecords != 3*4 {
			t.Errorf("%s: existing %d, injected %d; want 30 and 12", name, st.ExistingContext, st.InjectedRecords)
		}
	}
}

// TestLegacyMessageSetsUntouched: message sets of magic 0 and 1 (pre-0.11 clients, encoded
// here with kmsg as such a client does, CRC and all) have no headers to carry a context: they
// are skipped, left byte for byte as they are, and never walked as consumed records.
func TestLegacyMessageSetsUntouched(t *testing.T) {
	legacy := map[string][]byte{}
	var set0, set1 []byte
	for i := range 3 {
		m0 := kmsg.MessageV0{Offset: int64(i), Magic: 0, Key: []byte("k"), Value: []byte(fmt.Sprint("v", i))}
		m0.MessageSize = int32(len(m0.AppendTo(nil)) - 12)
		m0.CRC = int32(crc32.ChecksumIEEE(m0.AppendTo(nil)[16:]))
		set0 = m0.AppendTo(set0)
		m1 := kmsg.MessageV1{Offset: int64(i), Magic: 1, Timestamp: 1700000000000, Key: []byte("k"), Value: []byte(fmt.Sprint("v", i))}
		m1.MessageSize = int32(len(m1.AppendTo(nil)) - 12)
		m1.CRC = int32(crc32.ChecksumIEEE(m1.AppendTo(nil)[16:]))
		set1 = m1.AppendTo(set1)
	}
	legacy["magic 0"], legacy["magic 1"] = set0, set1
	for name, set := range legacy {
		c := newKgoCodec(DefaultMaxBatchBytes)
		out, changed, reason, err := c.Inject(nil, set, func(batchMeta, *recordMeta) []byte { return []byte("ctx") })
		if changed || reason != skipLegacyMagic || err != nil || out != nil {
			t.Errorf("%s: changed=%v reason=%q err=%v, want it skipped as %q", name, changed, reason, err, skipLegacyMagic)
		}
		walked, legacy := 0, 0
		if err := c.Walk(set, func(b batchMeta, r *recordMeta) {
			if b.Legacy {
				legacy++
			}
			if r != nil {
				walked++
			}
		}); err != nil || walked != 0 || legacy == 0 {
			t.Errorf("%s: walked %d records, %d legacy entries, %v; want none, reported as legacy", name, walked, legacy, err)
		}
	}
}

// TestOverlongTopicNotCheckpointed: a produce to a topic name longer than Kafka allows (the
// broker refuses it) goes upstream as it came, with no checkpoint to fill the caches with its
// name; one at the limit is injected as usual.
func TestOverlongTopicNotCheckpointed(t *testing.T) {
	for _, c := range []struct {
		topic  string
		inject bool
	}{
		{strings.Repeat("t", maxTopicNameBytes), true},
		{strings.Repeat("t", maxTopicNameBytes+1), false},
		{strings.Repeat("t", 32000), false},
	} {
		s := offlineSession(t)
		frame := produceFrame(9, c.topic, buildBatch(t, 3, 10, nil))
		out := rewrite(t, s, frame)
		skipped := s.p.Stats().SkippedBatches
		if injected := !bytes.Equal(out, frame); injected != c.inject || (skipped == 1) == c.inject {
			t.Errorf("topic of %d bytes: injected %v, skipped batches %d; want injected %v", len(c.topic), injected, skipped, c.inject)
		}
	}
}

// TestConnHeldPointsBounded: a connection's requests hold their checkpoints for the broker's
// answers up to maxConnHeldPoints; a batch past it is checkpointed when sent (and counted), and
// answers free the room again.
func TestConnHeldPointsBounded(t *testing.T) {
	defer func(old int64) { maxConnHeldPoints = old }(maxConnHeldPoints)
	maxConnHeldPoints = 15
	s := offlineSession(t)
	send := func() *producedPart { part, _ := sendHeld(t, s); return part }
	first := send()
	second := send()
	if first.points == nil || second.points != nil || s.heldPoints.Held() != 10 || s.p.Stats().UnheldBatches != 1 {
		t.Fatalf("held: first %v, second %v, %d points held, %d unheld batches; want the first only, 10, 1",
			first.points != nil, second.points != nil, s.heldPoints.Held(), s.p.Stats().UnheldBatches)
	}
	s.releasePoints(first, true) // its answer came
	if third := send(); third.points == nil || s.heldPoints.Held() != 10 {
		t.Errorf("after the answer: third held %v, %d points held; want held, 10", third.points != nil, s.heldPoints.Held())
	}
}
