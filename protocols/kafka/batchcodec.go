package kafka

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"

	"github.com/pierrec/lz4/v4"
	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// kgoCodec is the proxy's own record-batch codec, built on kgo's compressors: it decompresses a
// batch, splices one header into each record by copying bytes around the header count, and
// recompresses with the batch's own codec. It stands in until protocols/kafka/recbatch (a
// zero-decode splicer) lands; both implement batchCodec.
type kgoCodec struct {
	maxBatchBytes int
	dec           kgo.Decompressor
	comp          [5]kgo.Compressor
	raw           []byte // spliced records, reused
	zbuf          bytes.Buffer
	plain         plainBuf // decompressed records, reused
	bufs          bufList  // where buffers over keptBufBytes go when the connection is idle (Shed)
	bounded       boundedDecoders
	// lz4c is the fallback encoder's 136 KiB hash table (lz4Encode), made when a batch first needs
	// it and dropped when the connection is idle: every producing connection has a codec, and most
	// never take that path (lz4 batches are transcoded), or none at all (uncompressed ones).
	lz4c      *lz4.Compressor
	lz4t      lz4Transcoder
	smap      spliceMap
	grown     grownBatch // the last Inject's output: plain size and codec (size is the caller's)
	malformed error      // why the last Inject said skipMalformed (Malformed)
}

// maxKeptPlain bounds the decompression buffer a codec keeps between batches (one codec per
// connection: bigger batches are rare and get their own).
const maxKeptPlain = 1 << 20

// plainBuf is handed to kgo's decompressor as its byte pool, so every batch decompresses into the
// codec's one buffer rather than a fresh allocation (and a copy: kgo clones out of its own pool).
// Safe because a codec serves one goroutine and nothing keeps decompressed bytes past the batch.
type plainBuf struct{ b []byte }

func (p *plainBuf) GetDecompressBytes([]byte, kgo.CompressionCodecType) []byte { return p.b[:0] }
func (p *plainBuf) PutDecompressBytes(b []byte)                                { p.keep(b) }

// keep adopts a buffer the decompressor grew.
func (p *plainBuf) keep(b []byte) {
	if cap(b) > cap(p.b) && cap(b) <= maxKeptPlain {
		p.b = b[:0]
	}
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Skip reasons, the Name of the ProxySkip event.
const (
	skipLegacyMagic  = "legacy_message_set"
	skipControl      = "control_batch"
	skipUnknownCodec = "unknown_codec"
	skipBadCRC       = "bad_crc"
	skipMalformed    = "malformed_batch"
	skipSizeLimit    = "size_limit"
	skipCompression  = "compression_failed"
	// skipTopicSizeLimit: the topic's max.message.bytes, read from the cluster or learned from a
	// refusal, is below the grown batch (topicLimits).
	skipTopicSizeLimit = "topic_size_limit"
	// skipOverLimitAsSent: the batch was over the topic's limit before the header; the broker
	// refuses it whatever the proxy does, and that refusal is the event, not a skip.
	skipOverLimitAsSent = "over_limit_as_sent"
	// skipTopicLimitUnknown: an acks=0 batch to a topic whose limit is not known (yet); see
	// topicLimits.check.
	skipTopicLimitUnknown = "topic_limit_unknown"
	// skipDecompressedSize: the batch decompresses past MaxDecompressedBatchBytes.
	skipDecompressedSize = "decompressed_size_limit"
)

func newKgoCodec(maxBatchBytes int) *kgoCodec {
	c := &kgoCodec{maxBatchBytes: maxBatchBytes}
	c.dec = kgo.DefaultDecompressor(&c.plain)
	return c
}

// compressor returns kgo's compressor for codec (1 gzip, 2 snappy, 4 zstd), built on first use:
// building all of them took about 0.3 ms per producer connection, most of it for zstd. Snappy
// goes out as kgo writes it, one raw block, also when the client sent the xerial framing (sarama,
// kafka-go, Java): the codec bits stay the same, and every Kafka reader takes both forms.
func (c *kgoCodec) compressor(codec int16) kgo.Compressor {
	if c.comp[codec] == nil {
		var cc kgo.CompressionCodec
		switch codec {
		case 1:
			cc = kgo.GzipCompression()
		case 2:
			cc = kgo.SnappyCompression()
		case 4:
			cc = kgo.ZstdCompression()
		default:
			return nil
		}
		if comp, err := kgo.DefaultCompressor(cc); err == nil {
			c.comp[codec] = comp
		}
	}
	return c.comp[codec]
}

// newCodec is a connection's codec: its batch buffers over keptBufBytes go to bufs when the
// connection is idle (Shed).
func newCodec(maxBatchBytes int, bufs bufList) batchCodec {
	c := newKgoCodec(maxBatchBytes)
	c.bufs = bufs
	return c
}

// Shed implements batchCodec.
func (c *kgoCodec) Shed() {
	c.lz4c = nil
	if cap(c.raw) > keptBufBytes {
		c.bufs.put(c.raw)
		c.raw = nil
	}
	if cap(c.plain.b) > keptBufBytes {
		c.bufs.put(c.plain.b)
		c.plain.b = nil
	}
	if c.zbuf.Cap() > keptBufBytes {
		b := c.zbuf.Bytes() // what nothing refers to any more: its output was copied out
		c.zbuf = bytes.Buffer{}
		c.bufs.put(b[:0])
	}
}

var errBatch = errors.New("malformed record batch")

// batchHeader reads the fixed part of a magic-2 batch.
func batchHeader(b []byte) (meta batchMeta, attrs int16, count int, err error) {
	if len(b) < 61 {
		return meta, 0, 0, errBatch
	}
	attrs = int16(binary.BigEndian.Uint16(b[21:]))
	meta.BaseOffset = int64(binary.BigEndian.Uint64(b[0:]))
	meta.LastOffset = meta.BaseOffset + int64(int32(binary.BigEndian.Uint32(b[23:])))
	meta.ProducerID = int64(binary.BigEndian.Uint64(b[43:]))
	meta.Transactional = attrs&0x10 != 0
	meta.Control = attrs&0x20 != 0
	count = int(int32(binary.BigEndian.Uint32(b[57:])))
	return meta, attrs, count, nil
}

// Inject implements batchCodec for a partition's Records (normally one batch; several are
// handled one by one, each kept as it was when it cannot be rewritten).
func (c *kgoCodec) Inject(dst, records []byte, decide func(batchMeta, *recordMeta) []byte) ([]byte, bool, string, error) {
	out := dst
	changed := false
	skip := ""
	c.grown = grownBatch{}
	c.malformed = nil
	for len(records) > 0 {
		if len(records) < 17 {
			c.malformed = fmt.Errorf("%d bytes after the last batch, fewer than a batch header", len(records))
			return dst, false, skipMalformed, nil
		}
		length := int(int32(binary.BigEndian.Uint32(records[8:])))
		if length < 49 || len(records) < 12+length {
			if records[16] != 2 && len(records) >= 12+length && length >= 0 {
				return dst, false, skipLegacyMagic, nil
			}
			c.malformed = fmt.Errorf("batch length %d in the %d bytes left", length, len(records)-12)
			return dst, false, skipMalformed, nil
		}
		batch := records[:12+length]
		records = records[12+length:]
		nb, rewritten, reason := c.injectBatch(out, batch, decide)
		if reason != "" {
			skip = reason
		}
		if rewritten {
			out, changed = nb, true
		} else {
			out = append(out, batch...) // as it was: skipped, or every record carries a context already
			c.grown.plain += len(batch)
		}
	}
	if !changed {
		return dst, false, skip, nil
	}
	return out, true, skip, nil
}

// injectBatch appends batch with headers spliced in to dst and reports true, or leaves dst as it
// was and reports false: with a skip reason, or with none when no record needed a header.
func (c *kgoCodec) injectBatch(dst, batch []byte, decide func(batchMeta, *recordMeta) []byte) ([]byte, bool, string) {
	if batch[16] != 2 {
		return dst, false, skipLegacyMagic
	}
	meta, attrs, count, err := batchHeader(batch)
	if err != nil {
		c.malformed = fmt.Errorf("batch header: %w", err)
		return dst, false, skipMalformed
	}
	if meta.Control {
		return dst, false, skipControl
	}
	codec := attrs & 7
	if codec > 4 {
		return dst, false, skipUnknownCodec
	}
	if crc32.Checksum(batch[21:], crcTable) != binary.BigEndian.Uint32(batch[17:]) {
		return dst, false, skipBadCRC
	}
	raw, err := c.decompress(batch[61:], codec)
	if errors.Is(err, errDecompressedSize) {
		return dst, false, skipDecompressedSize
	}
	if err != nil {
		c.malformed = fmt.Errorf("decompressing codec %d: %w", codec, err)
		return dst, false, skipMalformed
	}
	start := len(dst)
	if codec == 0 {
		// Uncompressed: splice straight after the header in dst, no intermediate copy.
		dst = append(dst, batch[:61]...)
		var n int
		if dst, n, err = spliceHeadersMax(dst, raw, count, meta, decide, nil, c.maxBatchBytes); err != nil {
			if errors.Is(err, errSplicedSize) {
				return dst[:start], false, skipSizeLimit
			}
			c.malformed = fmt.Errorf("records: %w", err)
			return dst[:start], false, skipMalformed
		}
		if n == 0 {
			return dst[:start], false, "" // nothing needed a header: keep the batch as it was, byte for byte
		}
		dst, ok, why := c.finishBatch(dst, start)
		if ok {
			c.grown.plain += len(dst) - start
		}
		return dst, ok, why
	}
	var m *spliceMap
	if codec == 3 {
		c.smap.reset()
		m = &c.smap
	}
	// The spliced copy in one allocation where its size can be told: grown a quarter at a time, a
	// batch that splices to the limit allocated about five times the limit on the way.
	if est := min(len(raw)+min(count, len(raw)/minRecordBytes)*spliceGrowthPerRecord, decompressLimit+spliceGrowthPerRecord); cap(c.raw) < est {
		c.raw = make([]byte, 0, est)
	}
	spliced, n, err := spliceHeadersMax(c.raw[:0], raw, count, meta, decide, m, decompressLimit)
	c.raw = spliced[:0]
	if cap(spliced) > maxKeptPlain {
		c.raw = nil // kept for this batch only, as plain is
	}
	if errors.Is(err, errSplicedSize) {
		return dst, false, skipDecompressedSize
	}
	if err != nil {
		c.malformed = fmt.Errorf("records: %w", err)
		return dst, false, skipMalformed
	}
	if n == 0 {
		return dst, false, "" // nothing needed a header: keep the batch as it was, byte for byte
	}
	dst = append(dst, batch[:61]...)
	switch codec {
	case 3:
		var ok bool
		if dst, ok = c.lz4t.transcode(dst, batch[61:], raw, spliced, m); !ok {
			if c.lz4c == nil {
				c.lz4c = new(lz4.Compressor)
			}
			dst = lz4Encode(dst, spliced, c.lz4c) // straight into dst: no copy of the compressed body
		}
	default:
		c.zbuf.Reset()
		comp := c.compressor(codec)
		if comp == nil {
			return dst[:start], false, skipCompression
		}
		z, typ := comp.Compress(&c.zbuf, spliced)
		if int16(typ) != codec {
			return dst[:start], false, skipCompression
		}
		dst = append(dst, z...)
		if c.zbuf.Cap() > maxKeptPlain {
			c.zbuf = bytes.Buffer{}
		}
	}
	dst, ok, why := c.finishBatch(dst, start)
	if ok {
		c.grown.plain += 61 + len(spliced)
		c.grown.codec = codec
	}
	return dst, ok, why
}

// finishBatch checks the size of the rewritten batch dst[start:] and sets its length and CRC.
func (c *kgoCodec) finishBatch(dst []byte, start int) ([]byte, bool, string) {
	if len(dst)-start > c.maxBatchBytes {
		return dst[:start], false, skipSizeLimit
	}
	nb := dst[start:]
	binary.BigEndian.PutUint32(nb[8:], uint32(len(nb)-12))
	binary.BigEndian.PutUint32(nb[17:], crc32.Checksum(nb[21:], crcTable))
	return dst, true, ""
}

// recordFields locates the parts of one record body (after its length prefix).
type recordFields struct {
	offsetDelta int32
	countPos    int // where the header count varint starts
	countEnd    int
	headerCount int
	payload     int64
	context     []byte
	hasContext  bool
}

// parseRecord reads one record body. A record is six or more varints, and read through
// kbin.Reader's methods they were a quarter of splicing an uncompressed batch and most of
// observing a fetched one; here they are read by index, the one-byte case without a call into kbin.
func parseRecord(body []byte) (recordFields, error) {
	var f recordFields
	if len(body) < 1 {
		return f, errBatch
	}
	i := 1 // attributes
	if i < len(body) && body[i] < 0x80 {
		i++ // timestamp delta, one byte
	} else if _, n := kbin.Varlong(body[i:]); n > 0 {
		i += n
	} else {
		return f, errBatch
	}
	var v int32
	if f.offsetDelta, i = varintAt(body, i); i < 0 {
		return f, errBatch
	}
	for range 2 { // key, value: null (negative) or that many bytes
		if v, i = varintAt(body, i); i < 0 || int(v) > len(body)-i {
			return f, errBatch
		}
		if v > 0 {
			i += int(v)
			f.payload += int64(v)
		}
	}
	f.countPos = i
	if v, i = varintAt(body, i); i < 0 || v < 0 || int(v) > len(body)-i {
		return f, errBatch
	}
	f.countEnd, f.headerCount = i, int(v)
	for range f.headerCount {
		var kl, vl int32
		if kl, i = varintAt(body, i); i < 0 || kl < 0 || int(kl) > len(body)-i {
			return f, errBatch
		}
		key := body[i : i+int(kl)]
		i += int(kl)
		if vl, i = varintAt(body, i); i < 0 || int(vl) > len(body)-i {
			return f, errBatch
		}
		var val []byte
		if vl > 0 {
			val = body[i : i+int(vl)]
			i += int(vl)
		}
		f.payload += int64(len(key) + len(val))
		if string(key) == pathway.HeaderKey {
			f.context, f.hasContext = val, true
		}
	}
	if i != len(body) {
		return f, errBatch
	}
	return f, nil
}

// eachContextHeader calls fn with the span of every pathway context header among the count
// headers that start at body[i:], which parseRecord has already checked.
func eachContextHeader(body []byte, i, count int, fn func(at, end int)) {
	for range count {
		at := i
		kl, j := varintAt(body, i)
		key := body[j : j+int(kl)]
		vl, k := varintAt(body, j+int(kl))
		i = k + max(0, int(vl))
		if string(key) == pathway.HeaderKey {
			fn(at, i)
		}
	}
}

// varintAt reads the zigzag varint at b[i:] and returns it with the index after it, or with -1
// when b ends first or the varint overflows 32 bits.
func varintAt(b []byte, i int) (int32, int) {
	if i < len(b) {
		if c := int32(b[i]); c < 0x80 {
			return c>>1 ^ -(c & 1), i + 1
		}
	}
	return varintSlow(b, i)
}

func varintSlow(b []byte, i int) (int32, int) {
	if i >= len(b) {
		return 0, -1
	}
	v, n := kbin.Varint(b[i:])
	if n <= 0 {
		return 0, -1
	}
	return v, i + n
}

// spliceHeaders copies count records from raw to dst, adding the header decide returns to each.
// It returns how many records got one.
// When m is not nil it records which bytes of dst (counted from where spliceHeaders started) are
// copies of which bytes of raw, and where the inserted headers are, for lz4Transcoder.transcode.
func spliceHeaders(dst, raw []byte, count int, meta batchMeta, decide func(batchMeta, *recordMeta) []byte, m *spliceMap) ([]byte, int, error) {
	return spliceHeadersMax(dst, raw, count, meta, decide, m, math.MaxInt)
}

// minRecordBytes is the smallest record a batch can hold (length, attributes, timestamp and
// offset deltas, null key, null value, no headers: one byte each), which bounds the records a
// batch's bytes can declare; spliceGrowthPerRecord is about what a pathway header adds to one.
const (
	minRecordBytes        = 7
	spliceGrowthPerRecord = 64
)

// errSplicedSize: the spliced records passed spliceHeadersMax's limit.
var errSplicedSize = errors.New("spliced records over the limit")

// spliceHeadersMax is spliceHeaders that stops with errSplicedSize once it has written more than
// limit bytes: a small compressed batch of tiny records grows by a header per record, and the
// limit on what a batch decompresses to does not bound what it grows to.
func spliceHeadersMax(dst, raw []byte, count int, meta batchMeta, decide func(batchMeta, *recordMeta) []byte, m *spliceMap, limit int) ([]byte, int, error) {
	added := 0
	rm := new(recordMeta) // one per batch: decide gets a pointer, so it escapes
	base, all := len(dst), len(raw)
	for i := 0; i < count; i++ {
		l32, at := varintAt(raw, 0)
		l := int(l32)
		if at < 0 || l < 0 || l > len(raw)-at {
			return dst, 0, errBatch
		}
		if len(dst)-base > limit {
			return dst, 0, errSplicedSize
		}
		recAt, bodyAt := all-len(raw), all-len(raw)+at
		rec, body := raw[:at+l], raw[at:at+l]
		raw = raw[at+l:]
		f, err := parseRecord(body)
		if err != nil {
			return dst, 0, err
		}
		*rm = recordMeta{OffsetDelta: f.offsetDelta, PayloadSize: f.payload, Context: f.context, HasContext: f.hasContext}
		hdr := decide(meta, rm)
		if hdr == nil {
			// Kept byte for byte, length prefix included (a client may pad its varints): the
			// lz4 transcoder copies this span from the original.
			if m != nil {
				m.kept(recAt, len(dst)-base, len(rec))
			}
			dst = append(dst, rec...)
			continue
		}
		// A context the record already carries is replaced, not kept beside the new one, as the
		// tracers do (they remove the key first).
		dropped, droppedBytes := 0, 0
		if f.hasContext {
			eachContextHeader(body, f.countEnd, f.headerCount, func(at, end int) { dropped, droppedBytes = dropped+1, droppedBytes+end-at })
		}
		var countBuf [5]byte
		newCount := kbin.AppendVarint(countBuf[:0], int32(f.headerCount-dropped+1))
		extra := kbin.VarintLen(int32(len(pathway.HeaderKey))) + len(pathway.HeaderKey) + kbin.VarintLen(int32(len(hdr))) + len(hdr)
		newLen := l - (f.countEnd - f.countPos) + len(newCount) - droppedBytes + extra
		dst = kbin.AppendVarint(dst, int32(newLen))
		if m != nil {
			m.kept(bodyAt, len(dst)-base, f.countPos)
		}
		dst = append(dst, body[:f.countPos]...)
		dst = append(dst, newCount...)
		from := f.countEnd
		if dropped > 0 {
			eachContextHeader(body, f.countEnd, f.headerCount, func(at, end int) {
				if m != nil {
					m.kept(bodyAt+from, len(dst)-base, at-from)
				}
				dst = append(dst, body[from:at]...)
				from = end
			})
		}
		if m != nil {
			m.kept(bodyAt+from, len(dst)-base, l-from)
		}
		dst = append(dst, body[from:]...)
		if m != nil {
			m.insertedHeader(len(dst)-base, extra, hdr)
		}
		dst = kbin.AppendVarintString(dst, pathway.HeaderKey)
		dst = kbin.AppendVarintBytes(dst, hdr)
		added++
	}
	if len(raw) != 0 {
		return dst, 0, fmt.Errorf("%w: %d bytes after %d records", errBatch, len(raw), count)
	}
	return dst, added, nil
}

// Walk implements batchCodec for fetched record batches; a truncated last batch ends the walk. A
// batch past MaxDecompressedBatchBytes is passed over, and reported when the walk ends. A legacy
// (magic 0/1) message set entry is passed to fn once, as a Legacy batchMeta without a record.
func (c *kgoCodec) Walk(records []byte, fn func(batchMeta, *recordMeta)) error {
	var tooBig error
	for len(records) >= 17 {
		length := int(int32(binary.BigEndian.Uint32(records[8:])))
		if length < 0 || len(records) < 12+length {
			return tooBig // partial trailing batch: normal in fetch responses
		}
		batch := records[:12+length]
		records = records[12+length:]
		if length < 5 {
			continue // too short to hold a magic byte
		}
		if batch[16] != 2 {
			fn(batchMeta{Legacy: true, BaseOffset: int64(binary.BigEndian.Uint64(batch))}, nil) // once per message set entry
			continue
		}
		if length < 49 {
			continue // too short to be a record batch
		}
		meta, attrs, count, err := batchHeader(batch)
		if err != nil {
			return err
		}
		if meta.Control {
			fn(meta, nil) // once, without its marker record: a transaction's end is what counts
			continue
		}
		codec := attrs & 7
		if codec > 4 {
			return fmt.Errorf("%w: codec %d", errBatch, codec)
		}
		raw, err := c.decompress(batch[61:], codec)
		if errors.Is(err, errDecompressedSize) {
			// Well formed, only too big to look into here: the batches after it still count.
			tooBig = fmt.Errorf("batch at offset %d not observed: %w", meta.BaseOffset, err)
			continue
		}
		if err != nil {
			return fmt.Errorf("decompressing batch at offset %d: %w", meta.BaseOffset, err)
		}
		rm := new(recordMeta)
		for i := 0; i < count; i++ {
			l32, at := varintAt(raw, 0)
			l := int(l32)
			if at < 0 || l < 0 || l > len(raw)-at {
				return fmt.Errorf("%w: record %d of batch at offset %d", errBatch, i, meta.BaseOffset)
			}
			f, err := parseRecord(raw[at : at+l])
			if err != nil {
				return fmt.Errorf("record %d of batch at offset %d: %w", i, meta.BaseOffset, err)
			}
			raw = raw[at+l:]
			*rm = recordMeta{OffsetDelta: f.offsetDelta, PayloadSize: f.payload, Context: f.context, HasContext: f.hasContext}
			fn(meta, rm)
		}
	}
	return tooBig
}

// decompress returns a batch's records uncompressed (b itself for codec 0), in the codec's reused
// buffer, or errDecompressedSize past MaxDecompressedBatchBytes. gzip and zstd are decoded with
// that limit; snappy and lz4 batches state their size, which is checked first. lz4 frames of the
// usual shape are decoded block by block (lz4frame.go), others by kgo, as is snappy.
func (c *kgoCodec) decompress(b []byte, codec int16) ([]byte, error) {
	var raw []byte
	var err error
	switch codec {
	case 0:
		return b, nil
	case 1:
		raw, err = c.bounded.gunzip(c.plain.b[:0], b)
	case 4:
		raw, err = c.bounded.unzstd(c.plain.b[:0], b)
	case 2, 3:
		bound := snappyBound
		if codec == 3 {
			bound = lz4Bound
		}
		var n int
		if n, err = bound(b); err != nil {
			return nil, err
		}
		if n > decompressLimit {
			return nil, errDecompressedSize
		}
		var ok bool
		if codec == 3 {
			if raw, ok = lz4Decode(c.plain.b[:0], b); ok {
				break
			}
		}
		raw, err = c.dec.Decompress(b, kgo.CompressionCodecType(codec))
	default:
		return nil, fmt.Errorf("unknown compression codec %d", codec)
	}
	if err != nil {
		return nil, err
	}
	c.plain.keep(raw)
	return raw, nil
}

// Malformed implements batchCodec.
func (c *kgoCodec) Malformed() error { return c.malformed }

// Grown implements batchCodec.
func (c *kgoCodec) Grown(size int) grownBatch {
	g := c.grown
	g.size = size
	return g
}
