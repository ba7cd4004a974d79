package kafka

import (
	"bytes"
	"errors"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestDecompressedSizeLimit: a batch that decompresses past the limit is forwarded as it came
// (produce) and passed over (fetch) in every codec, while a batch just under it is still spliced
// and walked; the batch after an oversized one in a fetch still gets its checkpoints.
func TestDecompressedSizeLimit(t *testing.T) {
	defer func(l int) { decompressLimit = l }(decompressLimit)
	decompressLimit = 1 << 20
	for _, tc := range []struct {
		name  string
		codec kgo.CompressionCodec
	}{{"gzip", kgo.GzipCompression()}, {"snappy", kgo.SnappyCompression()}, {"lz4", kgo.Lz4Compression()}, {"zstd", kgo.ZstdCompression()}} {
		t.Run(tc.name, func(t *testing.T) {
			// Zeros-like values: each batch is a few KiB compressed.
			small := buildBatch(t, 20, 10<<10, compressor(t, tc.codec)) // 200 KiB of records
			big := buildBatch(t, 40, 50<<10, compressor(t, tc.codec))   // 2 MiB
			c := newKgoCodec(DefaultMaxBatchBytes)
			give := func(batchMeta, *recordMeta) []byte { return []byte("ctx") }
			if _, changed, skip, err := c.Inject(nil, small, give); err != nil || !changed {
				t.Fatalf("batch under the limit: changed %v, skip %q, %v", changed, skip, err)
			}
			out, changed, skip, err := c.Inject(nil, big, give)
			if err != nil || changed || skip != skipDecompressedSize || len(out) != 0 {
				t.Fatalf("batch over the limit: changed %v, skip %q, %d bytes out, %v", changed, skip, len(out), err)
			}
			walked := 0
			err = c.Walk(append(append([]byte{}, big...), small...), func(_ batchMeta, r *recordMeta) {
				if r != nil {
					walked++
				}
			})
			if !errors.Is(err, errDecompressedSize) {
				t.Errorf("walk over an oversized batch: %v", err)
			}
			if walked != 20 {
				t.Errorf("walked %d records, want the 20 of the batch after the oversized one", walked)
			}
			if len(c.plain.b) > 0 || cap(c.plain.b) > maxKeptPlain {
				t.Errorf("codec kept a %d-byte buffer", cap(c.plain.b))
			}
		})
	}
}

// TestBoundsRejectLies: a stated size cannot be got round by a frame the bound cannot read.
func TestBoundsRejectLies(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		fn   func([]byte) (int, error)
	}{
		{"lz4 truncated", []byte{0x04, 0x22, 0x4d, 0x18, 0x64, 0x70, 0xb9, 0x10, 0x00}, lz4Bound},
		{"lz4 not a frame", []byte("not an lz4 frame at all"), lz4Bound},
		{"lz4 block past the end", []byte{0x04, 0x22, 0x4d, 0x18, 0x64, 0x70, 0xb9, 0xff, 0x00, 0x00, 0x00, 1, 2}, lz4Bound},
		{"xerial block past the end", append(bytes.Clone(xerialMagic), 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0x10, 0, 1), snappyBound},
	} {
		if n, err := tc.fn(tc.b); err == nil {
			t.Errorf("%s: bound %d, no error", tc.name, n)
		}
	}
}

// TestCodecKeepsNoHugeBuffers: after a batch of many megabytes, the codec keeps none of the
// buffers it needed for it, so one such batch does not pin them for the connection's life.
func TestCodecKeepsNoHugeBuffers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		codec kgo.CompressionCodec
	}{{"gzip", kgo.GzipCompression()}, {"zstd", kgo.ZstdCompression()}, {"lz4", kgo.Lz4Compression()}} {
		c := newKgoCodec(64 << 20)
		batch := buildBatch(t, 100, 100<<10, compressor(t, tc.codec)) // 10 MiB of records
		if _, changed, skip, err := c.Inject(nil, batch, func(batchMeta, *recordMeta) []byte { return []byte("ctx") }); err != nil || !changed {
			t.Fatalf("%s: changed %v, skip %q, %v", tc.name, changed, skip, err)
		}
		if cap(c.raw) > maxKeptPlain || c.zbuf.Cap() > maxKeptPlain || cap(c.plain.b) > maxKeptPlain {
			t.Errorf("%s: codec keeps %d, %d and %d bytes of buffers", tc.name, cap(c.raw), c.zbuf.Cap(), cap(c.plain.b))
		}
	}
}

// TestWalkStopsAtATruncatedLastBatch: a broker fills a Fetch response up to the client's
// max bytes and may cut the last batch short; that is normal, not an error. Every cut of the
// second batch, including inside its header, leaves the first batch's records walked.
func TestWalkStopsAtATruncatedLastBatch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		codec kgo.CompressionCodec
	}{{"none", kgo.NoCompression()}, {"zstd", kgo.ZstdCompression()}} {
		first := buildBatch(t, 7, 100, compressor(t, tc.codec))
		second := buildBatch(t, 5, 100, compressor(t, tc.codec))
		c := newKgoCodec(DefaultMaxBatchBytes)
		for cut := 1; cut < len(second); cut++ {
			walked := 0
			err := c.Walk(append(append([]byte{}, first...), second[:cut]...), func(_ batchMeta, r *recordMeta) {
				if r != nil {
					walked++
				}
			})
			if err != nil || walked != 7 {
				t.Fatalf("%s, second batch cut to %d of %d bytes: walked %d records (want 7), %v", tc.name, cut, len(second), walked, err)
			}
		}
	}
}
