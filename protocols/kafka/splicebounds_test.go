package kafka

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"runtime"
	"testing"
	"time"

	"github.com/pierrec/lz4/v4"
	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestSpliceGrowthBounded: MaxDecompressedBatchBytes keeps "a small batch of zeros compressed a
// thousandfold" from making the proxy allocate gigabytes, but a batch of minimal 7-byte records
// that decompresses to just under it grows ~8x with a header per record. The splice stops at the
// same limit, and the batch goes upstream as it came.
func TestSpliceGrowthBounded(t *testing.T) {
	// Scaled down (decompressLimit is lowered by tests) so the test runs in seconds under -race;
	// before the bound, with the real 64 MiB limit, 9,000,000 records in a 12 KB request made the
	// proxy allocate 9.3 GiB and forward a batch that decompresses to ~600 MB. Here it was 571 MiB
	// for the 4 MiB limit, then 57 MiB; with the checkpoints per batch bounded (maxBatchPoints) and
	// the spliced copy allocated once, 41 MiB here (a constant part is the codecs' own state), and
	// 161 MiB for the real 64 MiB limit (941 MiB before those two).
	old := decompressLimit
	decompressLimit = 4 << 20
	t.Cleanup(func() { decompressLimit = old })
	n := decompressLimit/7 - 100 // 7-byte records, just under the limit
	raw := bytes.Repeat([]byte{12, 0, 0, 0, 1, 0, 0}, n)
	var buf bytes.Buffer
	z, typ := compressor(t, kgo.ZstdCompression()).Compress(&buf, raw)
	batch := wrapBatch(append([]byte(nil), z...), n, int16(typ))
	raw = nil
	frame := produceFrame(9, "t", batch)
	s := offlineSession(t)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	out := rewrite(t, s, frame)
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("request %d bytes, rewritten to %d bytes (injected=%v), proxy allocated %d MiB in %v",
		len(frame), len(out), len(out) != len(frame), alloc>>20, took)
	if alloc > 12*uint64(decompressLimit) {
		t.Errorf("one %d-byte produce request made the proxy allocate %d MiB (> 12 x the %d MiB decompression limit)", len(frame), alloc>>20, decompressLimit>>20)
	}
	if !bytes.Equal(out, frame) {
		t.Errorf("the batch was rewritten (%d bytes), want it forwarded as it came", len(out))
	}
}

// TestLz4KeptRecordWithPaddedLength: a record that keeps its bytes (it already carries a context;
// respect_existing_context is the default) is recorded in the lz4 splice map as a copy of its
// length prefix and body, and must be written as exactly that. When the client's varint was not
// minimal (legal: Kafka's and kbin's readers accept it), re-encoding it made the map off by the
// difference and the transcoder emitted matches that copy the wrong bytes: the rewritten batch
// (with a valid CRC) decompresses to records other than the ones spliced.
func TestLz4KeptRecordWithPaddedLength(t *testing.T) {
	val := bytes.Repeat([]byte("abcdefgh-0123456789-"), 12)
	record := func(i int, withCtx bool, padded bool) []byte {
		var body []byte
		body = append(body, 0)
		body = kbin.AppendVarlong(body, 0)
		body = kbin.AppendVarint(body, int32(i))
		body = kbin.AppendVarintBytes(body, nil)
		body = kbin.AppendVarintBytes(body, val)
		if withCtx {
			body = kbin.AppendVarint(body, 1)
			body = kbin.AppendVarintString(body, pathway.HeaderKey)
			body = kbin.AppendVarintBytes(body, []byte("existing-context-value"))
		} else {
			body = kbin.AppendVarint(body, 0)
		}
		l := kbin.AppendVarint(nil, int32(len(body)))
		if padded { // same value, one byte longer: continuation bit on the last byte, then 0x00
			l[len(l)-1] |= 0x80
			l = append(l, 0)
		}
		return append(l, body...)
	}
	var raw []byte
	raw = append(raw, record(0, true, true)...)
	raw = append(raw, record(1, false, false)...)
	raw = append(raw, record(2, true, false)...)
	raw = append(raw, record(3, false, false)...)

	var zb bytes.Buffer
	w := lz4.NewWriter(&zb)
	if err := w.Apply(lz4.ChecksumOption(false), lz4.BlockSizeOption(lz4.Block64Kb)); err != nil {
		t.Fatal(err)
	}
	w.Write(raw)
	w.Close()
	batch := wrapBatch(zb.Bytes(), 4, 3)

	decide := func(_ batchMeta, r *recordMeta) []byte {
		if r.HasContext {
			return nil // as injectPartition does with respect_existing_context (the default)
		}
		return []byte("new-context-value-xyz")
	}
	want, _, err := spliceHeaders(nil, raw, 4, batchMeta{}, decide, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := newKgoCodec(DefaultMaxBatchBytes)
	out, changed, skip, err := c.Inject(nil, batch, decide)
	if !changed || err != nil {
		t.Fatalf("not rewritten: skip=%q err=%v", skip, err)
	}
	if crc32.Checksum(out[21:], crc32.MakeTable(crc32.Castagnoli)) != binary.BigEndian.Uint32(out[17:]) {
		t.Fatal("bad crc")
	}
	got, err := kgo.DefaultDecompressor().Decompress(out[61:], kgo.CodecLz4)
	if err != nil {
		t.Fatalf("rewritten lz4 batch does not decompress: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("rewritten lz4 batch decompresses to other records than the spliced ones (%d vs %d bytes; first difference at %d)",
			len(got), len(want), firstDiff(got, want))
	}
	if _, _, err := spliceHeaders(nil, got, 4, batchMeta{}, func(batchMeta, *recordMeta) []byte { return nil }, nil); err != nil {
		t.Errorf("a consumer cannot parse the rewritten batch's records: %v", err)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestUnparsedAcksZeroProduce: a Produce request the proxy cannot parse is forwarded as it is; when
// its acks (read alone) is 0, no answer will come, and nothing may wait for one (an entry left in
// the pairing queue held drains and, a thousand later, the connection).
func TestUnparsedAcksZeroProduce(t *testing.T) {
	s := offlineSession(t)
	for _, acks := range []int16{0, -1, 1} {
		req := kmsg.NewPtrProduceRequest()
		req.Version, req.Acks = 9, acks
		frame := requestFrame(req, 7)
		cut := append([]byte(nil), frame[:len(frame)-1]...) // the topics array's end is missing
		putSize(cut)
		h, err := parseRequestHeader(cut)
		if err != nil {
			t.Fatal(err)
		}
		out, pd := s.produceRequest(h, cut, &pending{corr: h.CorrID, key: h.Key, version: h.Version})
		if !bytes.Equal(out, cut) || (pd == nil) != (acks == 0) {
			t.Errorf("acks %d: forwarded unchanged %v, waits for an answer %v", acks, bytes.Equal(out, cut), pd != nil)
		}
	}
}
