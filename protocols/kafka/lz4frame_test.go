package kafka

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"io"
	"math/bits"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/pierrec/lz4/v4"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestInjectLz4Framing: a rewritten lz4 batch is framed with independent blocks of the input's
// block maximum (kgo's 4 MiB here) and no content checksum, and still decodes record for record;
// the codec's reused buffers carry nothing from one batch into the next.
func TestInjectLz4Framing(t *testing.T) {
	s := offlineSession(t)
	comp := compressor(t, kgo.Lz4Compression())
	for _, n := range []int{300, 3, 120} { // 300 KiB (five blocks), then smaller batches into the same buffers
		frame := produceFrame(9, "t", buildBatch(t, n, 1024, comp))
		out := rewrite(t, s, frame)
		checkInjected(t, "lz4", frame, out)

		h, err := parseRequestHeader(out)
		if err != nil {
			t.Fatal(err)
		}
		var v produceRequestView
		if err := parseProduce(h, out, &v); err != nil || len(v.parts) != 1 {
			t.Fatalf("rewritten frame: %d parts, %v", len(v.parts), err)
		}
		lz := out[v.parts[0].recStart+61:]
		if len(lz) < 7 || lz[0] != 0x04 || lz[1] != 0x22 || lz[2] != 0x4d || lz[3] != 0x18 {
			t.Fatalf("no lz4 frame magic: % x", lz[:min(len(lz), 8)])
		}
		flg, bd := lz[4], lz[5]
		if flg>>6 != 1 || flg&0x20 == 0 || flg&0x04 != 0 {
			t.Errorf("%d records: FLG %08b: want version 1, independent blocks, no content checksum", n, flg)
		}
		if (bd>>4)&7 != 7 {
			t.Errorf("%d records: BD %08b: want kgo's 4 MiB blocks", n, bd)
		}
	}
}

// lz4Frames are frames of the shapes clients write: kgo's (4 MiB blocks, content checksum), the
// proxy's own, pierrec's with block checksums and a content size, and incompressible data
// (stored blocks); each decodes to content.
func lz4Frames(t testing.TB, content []byte) map[string][]byte {
	t.Helper()
	frames := map[string][]byte{}
	var buf bytes.Buffer
	c, typ := compressor(t, kgo.Lz4Compression()).Compress(&buf, content)
	if typ != kgo.CodecLz4 {
		t.Fatalf("kgo compressed with %v", typ)
	}
	frames["kgo"] = append([]byte(nil), c...)
	var lc lz4.Compressor
	frames["proxy"] = lz4Encode(nil, content, &lc)
	for name, opts := range map[string][]lz4.Option{
		"block checksums, content size": {lz4.BlockChecksumOption(true), lz4.SizeOption(uint64(len(content))), lz4.BlockSizeOption(lz4.Block256Kb)},
		"1 MiB blocks, no checksum":     {lz4.ChecksumOption(false), lz4.BlockSizeOption(lz4.Block1Mb)},
	} {
		var b bytes.Buffer
		w := lz4.NewWriter(&b)
		if err := w.Apply(opts...); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(content); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		frames[name] = b.Bytes()
	}
	return frames
}

func lz4Content(n int, random bool) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, uint64(n)))
	for i := range b {
		if random {
			b[i] = byte(r.Uint32())
		} else {
			b[i] = "abcdefgh "[r.IntN(9)]
		}
	}
	return b
}

// TestLz4Decode: the block decoder reads every usual frame shape, into an empty, a small and a
// reused buffer, and agrees with pierrec's reader.
func TestLz4Decode(t *testing.T) {
	for _, n := range []int{0, 1, 1000, 64 << 10, 300 << 10, 4<<20 + 64<<10} { // the last: two of kgo's 4 MiB blocks
		for _, random := range []bool{false, true} {
			content := lz4Content(n, random)
			for name, frame := range lz4Frames(t, content) {
				dsts := [][]byte{nil, make([]byte, 3, 10), make([]byte, 0, 1<<20)}
				if n > 1<<20 {
					// The buffer cases are the smaller sizes'; under -race each decode of 5 MiB
					// costs seconds of shadow memory.
					dsts = dsts[:1]
				}
				for _, dst := range dsts {
					got, ok := lz4Decode(dst, frame)
					if !ok || !bytes.Equal(got[len(dst):], content) || !bytes.Equal(got[:len(dst)], dst) {
						t.Errorf("%s, %d bytes (random %v), dst cap %d: ok=%v, %d bytes decoded", name, n, random, cap(dst), ok, len(got)-len(dst))
					}
				}
				want, err := io.ReadAll(lz4.NewReader(bytes.NewReader(frame)))
				if err != nil || !bytes.Equal(want, content) {
					t.Errorf("%s, %d bytes: pierrec reads %d bytes, %v", name, n, len(want), err)
				}
			}
		}
	}
}

// TestLz4DecodeDeclines: frames the block decoder does not take (or that are broken) return
// ok=false, for the general decompressor to judge, and never panic.
func TestLz4DecodeDeclines(t *testing.T) {
	content := lz4Content(200<<10, false)
	var lc lz4.Compressor
	good := lz4Encode(nil, content, &lc)
	mod := func(f func([]byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for name, frame := range map[string][]byte{
		"empty":          nil,
		"bad magic":      mod(func(b []byte) []byte { b[0] ^= 1; return b }),
		"linked blocks":  mod(func(b []byte) []byte { b[4] &^= 1 << 5; return b }),
		"dictionary id":  mod(func(b []byte) []byte { b[4] |= 1; return b }),
		"version 2":      mod(func(b []byte) []byte { b[4] = b[4]&0x3f | 0x80; return b }),
		"reserved bd":    mod(func(b []byte) []byte { b[5] = 0x10; return b }),
		"no end mark":    good[:len(good)-4],
		"cut in a block": good[:len(good)/2],
		"trailing bytes": append(append([]byte(nil), good...), 1, 2, 3),
		"two frames":     append(append([]byte(nil), good...), good...),
		"corrupt block":  mod(func(b []byte) []byte { b[11] ^= 0xff; b[12] ^= 0xff; return b }),
		"block too big":  mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[7:], 65<<10); return b }),
	} {
		for _, dst := range [][]byte{nil, make([]byte, 0, 70<<10)} {
			if got, ok := lz4Decode(dst, frame); ok && bytes.Equal(got, content) {
				t.Errorf("%s: decoded", name)
			} else if ok && name != "corrupt block" {
				t.Errorf("%s: ok with %d bytes", name, len(got))
			}
		}
	}
}

// TestLz4Encode: the proxy's frames decode with kgo's decompressor and pierrec's reader; blocks
// that do not shrink are stored.
func TestLz4Encode(t *testing.T) {
	dec := kgo.DefaultDecompressor()
	var lc lz4.Compressor
	for _, n := range []int{0, 1, 64 << 10, 64<<10 + 1, 1 << 20} {
		for _, random := range []bool{false, true} {
			content := lz4Content(n, random)
			frame := lz4Encode([]byte("prefix"), content, &lc)
			if string(frame[:6]) != "prefix" {
				t.Fatal("dst prefix overwritten")
			}
			frame = frame[6:]
			got, err := dec.Decompress(frame, kgo.CodecLz4)
			if err != nil || !bytes.Equal(got, content) {
				t.Errorf("%d bytes (random %v): kgo decodes %d bytes, %v", n, random, len(got), err)
			}
			if random && n > 0 && len(frame) > n+7+4*(n/lz4BlockSize+2) {
				t.Errorf("%d random bytes framed in %d: blocks not stored", n, len(frame))
			}
		}
	}
}

// FuzzLz4Decode: the block decoder never panics, and what it accepts pierrec's reader decodes
// to the same bytes. pierrec's reader allocates the block size a frame declares: for 1 and 4 MiB
// blocks that took up to 11 ms an input (against 1-25 µs for ours); a sixteenth of those inputs,
// chosen by their checksum, are compared.
func FuzzLz4Decode(f *testing.F) {
	// Small seeds: the fuzzer minimizes each new input in time that grows with its size, and
	// kilobyte seeds kept it minimizing for most of a run.
	for _, frame := range lz4Frames(f, lz4Content(300, false)) {
		f.Add(frame)
	}
	f.Add(lz4Frames(f, lz4Content(200, true))["proxy"])
	f.Fuzz(func(t *testing.T, frame []byte) {
		got, ok := lz4Decode(nil, frame)
		if !ok {
			return
		}
		if len(frame) > 5 && frame[5]>>4&7 >= 6 && crc32.ChecksumIEEE(frame)%16 != 0 {
			return
		}
		want, err := io.ReadAll(lz4.NewReader(bytes.NewReader(frame)))
		if err == nil && !bytes.Equal(got, want) {
			t.Fatalf("decoded %d bytes, pierrec %d", len(got), len(want))
		}
	})
}

// TestInjectLz4LinkedBlocks: a frame of linked blocks (liblz4's default, which python-kafka's
// lz4.frame writes) is one the transcoder does not walk; the batch is decompressed and encoded
// afresh (lz4Encode). That encoder's hash table is the biggest thing a codec holds, so it is made
// when first needed and dropped when the connection idles (Shed), and made again after.
func TestInjectLz4LinkedBlocks(t *testing.T) {
	const n = 40
	raw := jsonRecords(3, n, 300)
	var lc lz4.Compressor
	lz := lz4Encode(nil, raw, &lc)
	lz[4] &^= lz4FlgIndep
	lz[6] = byte(xxh32Small(lz[4:6]) >> 8) // the descriptor's checksum
	if got, err := io.ReadAll(lz4.NewReader(bytes.NewReader(lz))); err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("the linked-block frame does not decode with pierrec's reader: %v", err)
	}
	frame := produceFrame(9, "t", wrapBatch(lz, n, 3))
	s := offlineSession(t)
	for round := range 2 {
		checkInjected(t, "lz4 linked blocks", frame, rewrite(t, s, frame))
		c := s.codec.(*kgoCodec)
		if c.lz4c == nil {
			t.Fatalf("round %d: the batch was not encoded afresh (no encoder table made)", round)
		}
		c.Shed()
		if c.lz4c != nil {
			t.Fatalf("round %d: an idle connection's codec keeps the lz4 encoder table", round)
		}
	}
	if size := unsafe.Sizeof(kgoCodec{}); size > 4<<10 {
		t.Errorf("a codec is %d bytes before it is used: every producing connection holds one, so tables belong behind pointers", size)
	}
}

// xxh32Small is XXH32 with seed 0 for inputs under 16 bytes (an LZ4 frame descriptor).
func xxh32Small(b []byte) uint32 {
	const p1, p2, p3, p4, p5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
	h := uint32(p5) + uint32(len(b))
	for ; len(b) >= 4; b = b[4:] {
		h += binary.LittleEndian.Uint32(b) * p3
		h = bits.RotateLeft32(h, 17) * p4
	}
	for _, c := range b {
		h += uint32(c) * p5
		h = bits.RotateLeft32(h, 11) * p1
	}
	h ^= h >> 15
	h *= p2
	h ^= h >> 13
	h *= p3
	return h ^ h>>16
}
