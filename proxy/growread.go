package proxy

import (
	"io"
	"slices"
)

// GrowFrom is the least ReadGrowing grows a buffer by.
const GrowFrom = 64 << 10

// ReadGrowing appends n bytes read from r to b. Where b has no room for them, it grows as they
// arrive, doubling (by GrowFrom at least) up to what they need, so that a length a peer announces
// (a Kafka size prefix, an AMQP frame header, a Content-Length) cannot make the proxy allocate it
// before the bytes come: 300 connections that announced about a megabyte each and sent nothing
// more held about 300 MB when the whole length was taken at once. On error, b holds what came.
func ReadGrowing(r io.Reader, b []byte, n int) ([]byte, error) {
	end := len(b) + n
	for len(b) < end {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(end-len(b), max(len(b), GrowFrom)))
		}
		m, err := io.ReadFull(r, b[len(b):min(end, cap(b))])
		b = b[:len(b)+m]
		if err != nil {
			return b, err
		}
	}
	return b, nil
}
