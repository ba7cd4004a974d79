package kafka

import (
	"bytes"
	"encoding/binary"
	"strconv"

	"github.com/pierrec/lz4/v4"
)

// Kafka's lz4 batches are LZ4 frames. The proxy reads and writes the common shape itself, block by
// block with pierrec/lz4's block functions, instead of through lz4.Reader and lz4.Writer: those
// stream through their own block buffers (one more copy of every byte each way) and the reader
// verifies the content checksum, a second pass over the data that adds nothing here because the
// batch CRC-32C, checked before decompressing, covers every compressed byte. Frames of another
// shape (linked blocks, a dictionary, several frames) go to kgo's general decompressor.

// Frame descriptor FLG bits.
const (
	lz4FlgIndep       = 1 << 5
	lz4FlgBlockSum    = 1 << 4
	lz4FlgContentSize = 1 << 3
	lz4FlgContentSum  = 1 << 2
	lz4FlgReserved    = 1 << 1
	lz4FlgDictID      = 1 << 0
)

const (
	lz4Magic     = 0x184D2204
	lz4BlockSize = 64 << 10 // what lz4Encode writes, as the Java producer does
)

// lz4Headers are the frame headers the proxy writes, one per block maximum (BD 4 to 7): version 1,
// independent blocks, no block or content checksum, no content size, and the header checksum.
// They are taken from pierrec's writer with those options, so the bytes are the ones it writes.
var lz4Headers = func() [4][]byte {
	var hs [4][]byte
	for i, size := range []lz4.BlockSize{lz4.Block64Kb, lz4.Block256Kb, lz4.Block1Mb, lz4.Block4Mb} {
		var b bytes.Buffer
		w := lz4.NewWriter(&b)
		if err := w.Apply(lz4.BlockSizeOption(size), lz4.ChecksumOption(false), lz4.ConcurrencyOption(1)); err != nil {
			panic(err)
		}
		if err := w.Close(); err != nil {
			panic(err)
		}
		h := b.Bytes()
		if len(h) != 7+4 || binary.LittleEndian.Uint32(h) != lz4Magic || lz4BlockMax(h[5]) != int(size) {
			panic("unexpected lz4 frame header")
		}
		hs[i] = append([]byte(nil), h[:7]...)
	}
	return hs
}()

// lz4HeaderFor is the header for frames of blockMax-byte blocks (one lz4BlockMax returns).
func lz4HeaderFor(blockMax int) []byte {
	for _, h := range lz4Headers {
		if lz4BlockMax(h[5]) == blockMax {
			return h
		}
	}
	panic("no lz4 block maximum of " + strconv.Itoa(blockMax))
}

// lz4BlockMax is the block maximum size of a BD byte, or 0 for a reserved value.
func lz4BlockMax(bd byte) int {
	switch (bd >> 4) & 7 {
	case 4:
		return 64 << 10
	case 5:
		return 256 << 10
	case 6:
		return 1 << 20
	case 7:
		return 4 << 20
	}
	return 0
}

// lz4Decode appends the content of the LZ4 frame src to dst. ok is false when the frame is not
// one this decoder takes (linked blocks, a dictionary id, bytes after the end mark) or does not
// decode; the caller then hands it to the general decompressor, which decides. Checksums are not
// verified (see above).
func lz4Decode(dst, src []byte) (out []byte, ok bool) {
	if len(src) < 7 || binary.LittleEndian.Uint32(src) != lz4Magic {
		return dst, false
	}
	blockMax, pos, ok := lz4FrameShape(src)
	if !ok {
		return dst, false
	}
	flg := src[4]
	for {
		if len(src)-pos < 4 {
			return dst, false
		}
		size := binary.LittleEndian.Uint32(src[pos:])
		pos += 4
		if size == 0 { // end mark
			break
		}
		n := int(size &^ (1 << 31))
		if n > blockMax || n > len(src)-pos {
			return dst, false
		}
		block := src[pos : pos+n]
		pos += n
		if size&(1<<31) != 0 { // stored uncompressed
			dst = append(dst, block...)
		} else if dst, ok = lz4DecodeBlock(dst, block, blockMax); !ok {
			return dst, false
		}
		if flg&lz4FlgBlockSum != 0 {
			pos += 4
		}
	}
	if flg&lz4FlgContentSum != 0 {
		pos += 4
	}
	return dst, pos == len(src)
}

// lz4DecodeBlock appends the decoded block to dst. Blocks are declared up to 4 MiB (kgo's and
// pierrec's default) but Kafka batches are usually far smaller, so it decodes into the room dst has
// and grows it (doubling, up to the block maximum) only when that is too short, rather than
// reserving the maximum for every block.
func lz4DecodeBlock(dst, block []byte, blockMax int) ([]byte, bool) {
	want := min(blockMax, max(4*len(block), 64<<10)) // first try's room, when dst has less
	for {
		free := dst[len(dst):cap(dst)]
		if len(free) < want {
			dst = append(dst[:cap(dst)], make([]byte, want-len(free))...)[:len(dst)]
			free = dst[len(dst):cap(dst)]
		}
		if len(free) > blockMax {
			free = free[:blockMax]
		}
		k, err := lz4.UncompressBlock(block, free)
		if err == nil {
			return dst[:len(dst)+k], true
		}
		if len(free) == blockMax {
			return dst, false
		}
		want = min(blockMax, 2*len(free))
	}
}

// lz4Encode appends b to dst as one LZ4 frame of 64 KiB blocks; blocks that do not
// shrink are stored uncompressed, as the LZ4 frame format allows.
func lz4Encode(dst, b []byte, c *lz4.Compressor) []byte {
	dst = append(dst, lz4HeaderFor(lz4BlockSize)...)
	for len(b) > 0 {
		blk := b[:min(len(b), lz4BlockSize)]
		b = b[len(blk):]
		bound := lz4.CompressBlockBound(len(blk))
		if cap(dst)-len(dst) < 4+bound {
			dst = append(dst[:cap(dst)], make([]byte, 4+bound+len(b)/2)...)[:len(dst)]
		}
		at := len(dst)
		n, err := c.CompressBlock(blk, dst[at+4:at+4+bound])
		if err != nil || n <= 0 || n >= len(blk) {
			dst = binary.LittleEndian.AppendUint32(dst, uint32(len(blk))|1<<31)
			dst = append(dst, blk...)
			continue
		}
		dst = dst[:at+4+n]
		binary.LittleEndian.PutUint32(dst[at:], uint32(n))
	}
	return binary.LittleEndian.AppendUint32(dst, 0) // end mark
}
