package kafka

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// FuzzBatchSplice: whatever bytes a produce request carries as records, the splicer either leaves
// them alone or returns batches that decode, with valid CRCs, the same record count, and exactly one
// more header per record it said it changed; walking never panics. Batch for batch, a spliced one
// keeps the client's batch header (but for its length and CRC) and every record's attributes,
// timestamp and offset deltas, key, value and headers, in order; a record given the context has
// the one header more, last.
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
		checkSplicedRecords(t, records, out, hdr, false)
	})
}

// checkSplicedRecords: out is in, batch for batch, with hdr added as the last header of each
// record of a changed batch that carried no pathway context (with replace, of every record, whose
// pathway contexts go), and nothing else changed but the changed batches' lengths and CRCs.
// Records kmsg (the reference) does not read in in are not compared.
func checkSplicedRecords(t *testing.T, in, out, hdr []byte, replace bool) {
	t.Helper()
	dec := newKgoCodec(DefaultMaxBatchBytes) // its own buffers: the splicer's are not to be read twice
	for len(in) > 0 {
		if len(in) < 17 || len(out) < 17 {
			t.Fatalf("%d bytes left of the client's batches, %d of the spliced ones", len(in), len(out))
		}
		il, ol := int(binary.BigEndian.Uint32(in[8:]))+12, int(binary.BigEndian.Uint32(out[8:]))+12
		if ol < 61 || ol > len(out) {
			t.Fatalf("spliced batch length %d in %d bytes", ol, len(out))
		}
		ib, ob := in[:il], out[:ol]
		in, out = in[il:], out[ol:]
		if bytes.Equal(ib, ob) {
			continue
		}
		if !bytes.Equal(ib[:8], ob[:8]) || !bytes.Equal(ib[12:17], ob[12:17]) || !bytes.Equal(ib[21:61], ob[21:61]) {
			t.Fatalf("batch header %x became %x (length and CRC aside)", ib[:61], ob[:61])
		}
		irs, ok := kmsgRecords(dec, ib)
		if !ok {
			continue
		}
		ors, ok := kmsgRecords(dec, ob)
		if !ok || len(ors) != len(irs) {
			t.Fatalf("%d records in a batch kmsg reads, %d (read: %v) spliced", len(irs), len(ors), ok)
		}
		for i, ir := range irs {
			or := ors[i]
			isCtx := func(h kmsg.Header) bool { return h.Key == pathway.HeaderKey }
			want := ir.Headers
			if replace {
				want = append(slices.DeleteFunc(slices.Clone(want), isCtx), kmsg.Header{Key: pathway.HeaderKey, Value: hdr})
			} else if !slices.ContainsFunc(ir.Headers, isCtx) {
				want = append(slices.Clone(want), kmsg.Header{Key: pathway.HeaderKey, Value: hdr})
			}
			if or.Attributes != ir.Attributes || or.TimestampDelta64 != ir.TimestampDelta64 || or.OffsetDelta != ir.OffsetDelta ||
				!sameBytes(or.Key, ir.Key) || !sameBytes(or.Value, ir.Value) || len(or.Headers) != len(want) {
				t.Fatalf("record %d: %+v became %+v", i, ir, or)
			}
			for j, h := range want {
				if or.Headers[j].Key != h.Key || !sameBytes(or.Headers[j].Value, h.Value) {
					t.Fatalf("record %d: headers %+v became %+v, want %+v", i, ir.Headers, or.Headers, want)
				}
			}
		}
	}
	if len(out) != 0 {
		t.Fatalf("%d bytes after the spliced batches", len(out))
	}
}

// sameBytes: a and b hold the same bytes, and are both null or both not.
func sameBytes(a, b []byte) bool { return (a == nil) == (b == nil) && bytes.Equal(a, b) }

// kmsgRecords are batch's records as kmsg reads them, decompressed by dec.
func kmsgRecords(dec *kgoCodec, batch []byte) ([]kmsg.Record, bool) {
	_, attrs, count, err := batchHeader(batch)
	if err != nil || count < 0 {
		return nil, false
	}
	raw, err := dec.decompress(batch[61:], attrs&7)
	if err != nil {
		return nil, false
	}
	raw = bytes.Clone(raw)
	var recs []kmsg.Record
	for range count {
		l, at := varintAt(raw, 0)
		if at < 0 || l < 0 || int(l) > len(raw)-at {
			return nil, false
		}
		var r kmsg.Record
		if r.ReadFrom(raw[:at+int(l)]) != nil {
			return nil, false
		}
		recs = append(recs, r)
		raw = raw[at+int(l):]
	}
	return recs, len(raw) == 0
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
// of a spliced batch ends with exactly one pathway header, the new one, whatever it carried, and
// keeps its key, value and other headers in order.
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
		checkSplicedRecords(t, records, out, hdr, true)
	})
}
