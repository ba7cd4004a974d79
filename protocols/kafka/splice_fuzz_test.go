package kafka

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// FuzzBatchSplice: whatever bytes a produce request carries as records, the splicer either leaves
// them alone or returns batches that decode, with valid CRCs, the same record count, and exactly one
// more header per record it said it changed; walking never panics.
func FuzzBatchSplice(f *testing.F) {
	for _, c := range []kgo.CompressionCodec{kgo.NoCompression(), kgo.GzipCompression(), kgo.SnappyCompression(), kgo.Lz4Compression(), kgo.ZstdCompression()} {
		f.Add(buildBatch(f, 3, 20, compressor(f, c)))
	}
	two := buildBatch(f, 2, 5, nil)
	f.Add(append(append([]byte(nil), two...), two...))
	f.Add(two[:len(two)-3]) // truncated
	f.Add([]byte{})
	hdr := []byte("AAAAAAAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, records []byte) {
		c := newCodec(DefaultMaxBatchBytes, bufList{})
		injected := 0
		out, changed, _, err := c.Inject(nil, records, func(_ batchMeta, r *recordMeta) []byte {
			if r.HasContext {
				return nil
			}
			injected++
			return hdr
		})
		_ = c.Walk(records, func(batchMeta, *recordMeta) {})
		if err != nil || !changed {
			return
		}
		// Both sides must decode as batches; the output's CRCs must be right.
		before, after := countRecords(t, records, nil), countRecords(t, out, records)
		if before != after {
			t.Fatalf("%d records before, %d after splicing", before, after)
		}
		withCtx := 0
		for rest := out; len(rest) >= 17; {
			l := int(int32(binary.BigEndian.Uint32(rest[8:]))) + 12
			if l < 12 || l > len(rest) {
				break
			}
			batch := rest[:l]
			rest = rest[l:]
			if bytes.Contains(records, batch) {
				continue // forwarded as it was: not the splicer's to vouch for
			}
			if err := c.Walk(batch, func(_ batchMeta, r *recordMeta) {
				if r != nil && r.HasContext && bytes.Equal(r.Context, hdr) {
					withCtx++
				}
			}); err != nil {
				t.Fatalf("walking a spliced batch: %v", err)
			}
		}
		if withCtx < injected {
			t.Fatalf("%d records carry the injected context, the splicer injected %d", withCtx, injected)
		}
	})
}

// countRecords decodes a sequence of magic-2 batches with kmsg. With orig set, every batch must
// decode and carry a right CRC unless it is one of orig's batches forwarded as it was (a batch
// with a bad CRC is left alone, not repaired).
func countRecords(t *testing.T, b, orig []byte) int {
	checkCRC := orig != nil
	n := 0
	for len(b) >= 17 {
		var rb kmsg.RecordBatch
		if err := rb.ReadFrom(b); err != nil {
			if checkCRC {
				t.Fatalf("spliced batch does not decode: %v", err)
			}
			return n
		}
		l := int(rb.Length) + 12
		if l > len(b) {
			return n
		}
		if checkCRC && !bytes.Contains(orig, b[:l]) {
			if crc := crc32.Checksum(b[21:l], crcTable); uint32(rb.CRC) != crc {
				t.Fatalf("spliced batch CRC %08x, computed %08x", uint32(rb.CRC), crc)
			}
		}
		n += int(rb.NumRecords)
		b = b[l:]
	}
	return n
}

// FuzzBatchReplace: with every record given the context (RespectExistingContext off), each record
// of a spliced batch ends with exactly one pathway header, the new one, whatever it carried.
func FuzzBatchReplace(f *testing.F) {
	for _, c := range []kgo.CompressionCodec{kgo.NoCompression(), kgo.GzipCompression(), kgo.Lz4Compression()} {
		f.Add(buildBatchHeader(f, 3, 20, compressor(f, c), pathway.HeaderKey, []byte("old-context")))
		f.Add(buildBatch(f, 3, 20, compressor(f, c)))
	}
	hdr := []byte("AAAAAAAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, records []byte) {
		c := newKgoCodec(DefaultMaxBatchBytes)
		out, changed, _, err := c.Inject(nil, records, func(batchMeta, *recordMeta) []byte { return hdr })
		if err != nil || !changed {
			return
		}
		countRecords(t, out, records)
		for rest := out; len(rest) >= 61; {
			l := int(int32(binary.BigEndian.Uint32(rest[8:]))) + 12
			if l < 61 || l > len(rest) {
				break
			}
			batch := rest[:l]
			rest = rest[l:]
			if bytes.Contains(records, batch) {
				continue // forwarded as it was
			}
			_, attrs, count, err := batchHeader(batch)
			if err != nil {
				t.Fatalf("spliced batch header: %v", err)
			}
			raw, err := c.decompress(batch[61:], attrs&7)
			if err != nil {
				t.Fatalf("spliced batch does not decompress: %v", err)
			}
			for i := 0; i < count; i++ {
				l, at := varintAt(raw, 0)
				body := raw[at : at+int(l)]
				raw = raw[at+int(l):]
				rf, err := parseRecord(body)
				if err != nil {
					t.Fatalf("record %d: %v", i, err)
				}
				var n int
				eachContextHeader(body, rf.countEnd, rf.headerCount, func(int, int) { n++ })
				if n != 1 || !bytes.Equal(rf.context, hdr) {
					t.Fatalf("record %d carries %d pathway headers, the last %q", i, n, rf.context)
				}
			}
		}
	})
}
