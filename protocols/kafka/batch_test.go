package kafka

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"testing"

	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// buildBatch encodes a magic-2 batch of n records with valueSize-byte values, compressed with
// codec (nil = none), the way a producer does.
func buildBatch(t testing.TB, n, valueSize int, codec kgo.Compressor) []byte {
	t.Helper()
	return buildBatchHeader(t, n, valueSize, codec, "h", []byte("x"))
}

// buildBatchApart is buildBatch with records of n different sizes (valueSize, valueSize+1, ...):
// each gets a produce checkpoint of its own, where records alike would share one counted point.
func buildBatchApart(t testing.TB, n, valueSize int) []byte {
	t.Helper()
	var b []byte
	for i := range n {
		b = append(b, buildBatch(t, 1, valueSize+i, nil)...)
	}
	return b
}

// buildBatchHeader is buildBatch with one header, key: value, on every record (none when key is
// empty).
func buildBatchHeader(t testing.TB, n, valueSize int, codec kgo.Compressor, key string, value []byte) []byte {
	t.Helper()
	var raw []byte
	v := bytes.Repeat([]byte("v"), valueSize)
	for i := 0; i < n; i++ {
		var body []byte
		body = append(body, 0)                                          // attributes
		body = kbin.AppendVarlong(body, int64(i))                       // timestamp delta
		body = kbin.AppendVarint(body, int32(i))                        // offset delta
		body = kbin.AppendVarintBytes(body, []byte{byte('k'), byte(i)}) // key
		body = kbin.AppendVarintBytes(body, v)
		if key == "" {
			body = kbin.AppendVarint(body, 0)
		} else {
			body = kbin.AppendVarint(body, 1) // one header
			body = kbin.AppendVarintString(body, key)
			body = kbin.AppendVarintBytes(body, value)
		}
		raw = kbin.AppendVarint(raw, int32(len(body)))
		raw = append(raw, body...)
	}
	var attrs int16
	if codec != nil {
		var buf bytes.Buffer
		c, typ := codec.Compress(&buf, raw)
		raw = append([]byte(nil), c...)
		attrs = int16(typ)
	}
	return wrapBatch(raw, n, attrs)
}

// wrapBatch puts n records' bytes raw (compressed when attrs says so) in a magic-2 batch.
func wrapBatch(raw []byte, n int, attrs int16) []byte {
	b := make([]byte, 61, 61+len(raw))
	binary.BigEndian.PutUint64(b[0:], 0)
	binary.BigEndian.PutUint32(b[8:], uint32(49+len(raw)))
	binary.BigEndian.PutUint32(b[12:], 0xffffffff)
	b[16] = 2
	binary.BigEndian.PutUint16(b[21:], uint16(attrs))
	binary.BigEndian.PutUint32(b[23:], uint32(n-1))
	binary.BigEndian.PutUint64(b[27:], 1700000000000)
	binary.BigEndian.PutUint64(b[35:], 1700000000000+uint64(n-1))
	binary.BigEndian.PutUint64(b[43:], 0xffffffffffffffff)
	binary.BigEndian.PutUint16(b[51:], 0xffff)
	binary.BigEndian.PutUint32(b[53:], 0xffffffff)
	binary.BigEndian.PutUint32(b[57:], uint32(n))
	b = append(b, raw...)
	binary.BigEndian.PutUint32(b[17:], crc32.Checksum(b[21:], castagnoli))
	return b
}

// produceFrame wraps batches (one per partition of topic) in a produce request frame.
func produceFrame(version int16, topic string, batches ...[]byte) []byte {
	req := kmsg.NewPtrProduceRequest()
	req.Version = version
	req.Acks = -1
	req.TimeoutMillis = 1000
	t := kmsg.ProduceRequestTopic{Topic: topic}
	for i, b := range batches {
		t.Partitions = append(t.Partitions, kmsg.ProduceRequestTopicPartition{Partition: int32(i), Records: b})
	}
	req.Topics = []kmsg.ProduceRequestTopic{t}
	return kmsg.NewRequestFormatter(kmsg.FormatterClientID("bench-producer")).AppendRequest(nil, req, 1)
}

// decodeProduced reads every record of every partition of a produce request frame (with kmsg and
// kgo's decompressor, independent of the proxy's codec) and returns their headers.
func decodeProduced(t testing.TB, frame []byte) [][]kmsg.Header {
	t.Helper()
	h, err := parseRequestHeader(frame)
	if err != nil {
		t.Fatal(err)
	}
	req := kmsg.NewPtrProduceRequest()
	req.SetVersion(h.Version)
	if err := req.ReadFrom(frame[h.BodyStart:]); err != nil {
		t.Fatalf("rewritten produce request does not decode: %v", err)
	}
	var out [][]kmsg.Header
	dec := kgo.DefaultDecompressor()
	for _, tp := range req.Topics {
		for _, pp := range tp.Partitions {
			var rb kmsg.RecordBatch
			if err := rb.ReadFrom(pp.Records); err != nil {
				t.Fatalf("batch: %v", err)
			}
			if int(rb.Length)+12 != len(pp.Records) {
				t.Fatalf("batch length %d for %d bytes", rb.Length, len(pp.Records))
			}
			if crc := int32(crc32.Checksum(pp.Records[21:], castagnoli)); crc != rb.CRC {
				t.Fatalf("batch CRC %x, computed %x", rb.CRC, crc)
			}
			raw, err := dec.Decompress(rb.Records, kgo.CompressionCodecType(rb.Attributes&7))
			if err != nil {
				t.Fatalf("decompress: %v", err)
			}
			for i := int32(0); i < rb.NumRecords; i++ {
				r := kbin.Reader{Src: raw}
				l := int(r.Varint())
				var rec kmsg.Record
				if err := rec.ReadFrom(raw[:len(raw)-len(r.Src)+l]); err != nil {
					t.Fatalf("record %d: %v", i, err)
				}
				raw = r.Src[l:]
				out = append(out, rec.Headers)
			}
			if len(raw) != 0 {
				t.Fatalf("%d bytes after the last record", len(raw))
			}
		}
	}
	return out
}
