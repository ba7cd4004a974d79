package kafka

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// MaxDecompressedBatchBytes bounds what one record batch may decompress to in the proxy. A batch
// past it goes on as it came (produce: without the header; fetch: without consume checkpoints),
// so a small batch of zeros compressed a thousandfold cannot make the proxy allocate gigabytes.
// kgo's decompressor, which the codec used alone before, bounds nothing short of 2 GiB.
const MaxDecompressedBatchBytes = 64 << 20

// decompressLimit is MaxDecompressedBatchBytes, lowered by tests.
var decompressLimit = MaxDecompressedBatchBytes

var errDecompressedSize = errors.New("batch decompresses past the proxy's limit (MaxDecompressedBatchBytes)")

// boundedDecoders decompress gzip and zstd with a limit on the output; snappy and lz4 state their
// sizes up front, which snappyBound and lz4Bound read before they are decoded.
type boundedDecoders struct {
	gz   *gzip.Reader
	src  bytes.Reader
	zstd *zstd.Decoder
}

// gunzip appends src's decompressed bytes to dst, failing with errDecompressedSize past limit.
func (d *boundedDecoders) gunzip(dst, src []byte) ([]byte, error) {
	limit := decompressLimit
	d.src.Reset(src)
	if d.gz == nil {
		gz, err := gzip.NewReader(&d.src)
		if err != nil {
			return dst, err
		}
		d.gz = gz
	} else if err := d.gz.Reset(&d.src); err != nil {
		return dst, err
	}
	buf := bytes.NewBuffer(dst)
	n, err := buf.ReadFrom(io.LimitReader(d.gz, int64(limit)+1))
	if err != nil {
		return buf.Bytes(), err
	}
	if n > int64(limit) {
		return buf.Bytes(), errDecompressedSize
	}
	return buf.Bytes(), nil
}

// unzstd appends src's decompressed bytes to dst; the decoder refuses frames past the limit it
// was built with, whether they declare their size or not.
func (d *boundedDecoders) unzstd(dst, src []byte) ([]byte, error) {
	if d.zstd == nil {
		z, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxMemory(uint64(decompressLimit)))
		if err != nil {
			return dst, err
		}
		d.zstd = z
	}
	out, err := d.zstd.DecodeAll(src, dst)
	if errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) {
		return out, fmt.Errorf("%w: %w", errDecompressedSize, err)
	}
	return out, err
}

// snappyBound is the decompressed size a snappy batch declares: one raw block, or the blocks of
// the xerial framing Java producers write (a 16-byte header, then big-endian length + block).
func snappyBound(src []byte) (int, error) {
	if len(src) > 16 && bytes.HasPrefix(src, xerialMagic) {
		total := 0
		for rest := src[16:]; len(rest) > 0; {
			if len(rest) < 4 {
				return 0, errors.New("snappy: truncated xerial block length")
			}
			n := int(binary.BigEndian.Uint32(rest))
			if n > len(rest)-4 {
				return 0, errors.New("snappy: xerial block longer than the batch")
			}
			l, err := s2.DecodedLen(rest[4 : 4+n])
			if err != nil {
				return 0, err
			}
			if total += l; total > decompressLimit {
				return total, nil
			}
			rest = rest[4+n:]
		}
		return total, nil
	}
	return s2.DecodedLen(src)
}

var xerialMagic = []byte{130, 'S', 'N', 'A', 'P', 'P', 'Y', 0}

// lz4Bound is the most an lz4 batch can decompress to: its frames' blocks, each at most the
// frame's block maximum and 255 times its own size (stored blocks: their own length). Frames it
// cannot read it refuses.
func lz4Bound(src []byte) (int, error) {
	total := 0
	for len(src) > 0 {
		if len(src) < 7 || binary.LittleEndian.Uint32(src) != lz4Magic {
			return 0, errors.New("lz4: not a frame")
		}
		flg, bd := src[4], src[5]
		blockMax := lz4BlockMax(bd)
		if flg>>6 != 1 || blockMax == 0 {
			return 0, errors.New("lz4: unknown frame version or block size")
		}
		pos := 7
		if flg&lz4FlgContentSize != 0 {
			pos += 8
		}
		if flg&lz4FlgDictID != 0 {
			pos += 4
		}
		for {
			if len(src)-pos < 4 {
				return 0, errors.New("lz4: truncated frame")
			}
			size := binary.LittleEndian.Uint32(src[pos:])
			pos += 4
			if size == 0 {
				break
			}
			n := int(size &^ (1 << 31))
			if n > len(src)-pos {
				return 0, errors.New("lz4: block longer than the batch")
			}
			if size&(1<<31) != 0 {
				total += n
			} else {
				// A block holds at most blockMax, and lz4 writes a match's length in steps of 255
				// per byte: no block decodes to more than about 255 times its size.
				total += min(blockMax, 255*n+64)
			}
			if total > decompressLimit {
				return total, nil
			}
			pos += n
			if flg&lz4FlgBlockSum != 0 {
				pos += 4
			}
		}
		if flg&lz4FlgContentSum != 0 {
			pos += 4
		}
		if pos > len(src) {
			return 0, errors.New("lz4: truncated frame")
		}
		src = src[pos:]
	}
	return total, nil
}
