package pathway

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// HeaderKey is the header (Kafka, AMQP) or JSON key (SQS/SNS `_datadog`) that carries a context.
const HeaderKey = "dd-pathway-ctx-base64"

// Context is what travels with a message: the pathway hash of the last checkpoint, when the pathway
// started and when the last edge started. The zero Context means "no parent".
type Context struct {
	Hash         uint64
	PathwayStart time.Time
	EdgeStart    time.Time
}

// IsZero reports whether c carries no pathway (tracers never inject hash 0).
func (c Context) IsZero() bool { return c.Hash == 0 }

// MaxBinaryLen is the longest binary encoding: 8 hash bytes and two 9-byte varints.
const MaxBinaryLen = 8 + 9 + 9

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed pathway context")

// AppendBinary appends the tracers' binary layout: 8-byte little-endian hash, then pathway start
// and edge start in milliseconds, each zig-zag encoded then written as a varint.
func (c Context) AppendBinary(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, c.Hash)
	dst = appendVarint(dst, c.PathwayStart.UnixMilli())
	return appendVarint(dst, c.EdgeStart.UnixMilli())
}

// Base64Len is the length of the base64 text of a context with current-era timestamps.
const Base64Len = 28

// AppendBase64 appends the standard, padded base64 of the binary form (the header value).
func (c Context) AppendBase64(dst []byte) []byte {
	var raw [MaxBinaryLen]byte
	b := c.AppendBinary(raw[:0])
	n := base64.StdEncoding.EncodedLen(len(b))
	dst = grow(dst, n)
	base64.StdEncoding.Encode(dst[len(dst)-n:], b)
	return dst
}

// String returns the header value.
func (c Context) String() string { return string(c.AppendBase64(nil)) }

// DecodeBinary parses the binary layout. Bytes after the two timestamps are ignored, so a longer
// encoding from a newer tracer still yields its hash and times.
func DecodeBinary(b []byte) (Context, error) {
	if len(b) < 8 {
		return Context{}, fmt.Errorf("%w: %d bytes, need at least 8 for the hash", ErrMalformed, len(b))
	}
	h := binary.LittleEndian.Uint64(b)
	b = b[8:]
	ps, n, err := readVarint(b)
	if err != nil {
		return Context{}, fmt.Errorf("%w: pathway start: %w", ErrMalformed, err)
	}
	b = b[n:]
	es, _, err := readVarint(b)
	if err != nil {
		return Context{}, fmt.Errorf("%w: edge start: %w", ErrMalformed, err)
	}
	return Context{Hash: h, PathwayStart: time.UnixMilli(ps), EdgeStart: time.UnixMilli(es)}, nil
}

// DecodeBase64 parses a header value. Callers treat an error as "no parent".
func DecodeBase64(s []byte) (Context, error) {
	var raw [64]byte
	if base64.StdEncoding.DecodedLen(len(s)) > len(raw) {
		return Context{}, fmt.Errorf("%w: %d base64 characters is too long", ErrMalformed, len(s))
	}
	n, err := base64.StdEncoding.Decode(raw[:], s)
	if err != nil {
		return Context{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return DecodeBinary(raw[:n])
}

// DecodeBase64String is DecodeBase64 for a string value.
func DecodeBase64String(s string) (Context, error) {
	var raw [64]byte
	if base64.StdEncoding.DecodedLen(len(s)) > len(raw) {
		return Context{}, fmt.Errorf("%w: %d base64 characters is too long", ErrMalformed, len(s))
	}
	n, err := base64.StdEncoding.Decode(raw[:], []byte(s))
	if err != nil {
		return Context{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return DecodeBinary(raw[:n])
}

// The varint is sketches-go's: 7 bits per byte, low group first, at most 9 bytes, the 9th carrying 8 bits.
const maxVarLen64 = 9

var errShortVarint = errors.New("varint runs past the end")

func appendVarint(dst []byte, v int64) []byte {
	u := uint64(v>>63) ^ uint64(v<<1)
	for i := 0; i < maxVarLen64-1 && u >= 0x80; i++ {
		dst = append(dst, byte(u)|0x80)
		u >>= 7
	}
	return append(dst, byte(u))
}

func readVarint(b []byte) (int64, int, error) {
	var x uint64
	var s uint
	for i := 0; ; i++ {
		if i >= len(b) {
			return 0, 0, errShortVarint
		}
		c := b[i]
		if c < 0x80 || i == maxVarLen64-1 {
			x |= uint64(c) << s
			return int64(x>>1) ^ -int64(x&1), i + 1, nil
		}
		x |= uint64(c&0x7f) << s
		s += 7
	}
}

func grow(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		nb := make([]byte, len(b), len(b)+n)
		copy(nb, b)
		b = nb
	}
	return b[:len(b)+n]
}
