package kafka

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kbin"
)

// The produce request is parsed by hand rather than with kmsg: the proxy needs only where each
// partition's Records field sits (to splice new batches in by copying the bytes around them, no
// re-encode), and kmsg's tagged-field loop keeps counting down a huge tag count after the reader
// has run out of bytes, so a hostile frame could pin a CPU for seconds.

// producePartition locates one partition's records in a produce request frame.
type producePartition struct {
	topic     string
	topicID   [16]byte
	partition int32
	lenStart  int // offset of the Records length prefix in the frame
	recStart  int // offset of the records bytes
	recEnd    int
	null      bool
}

type produceRequestView struct {
	acks  int16
	acked bool // acks was read: a request that does not parse past it still says it
	parts []producePartition
}

var errProduceParse = errors.New("produce request does not parse")

// parseProduce reads a produce request body starting at frame[h.BodyStart:].
func parseProduce(h requestHeader, frame []byte, v *produceRequestView) error {
	v.parts = v.parts[:0]
	flex := h.Version >= 9
	r := kbin.Reader{Src: frame[h.BodyStart:]}
	pos := func() int { return len(frame) - len(r.Src) }
	if h.Version >= 3 {
		if flex {
			r.CompactNullableString()
		} else {
			r.NullableString()
		}
	}
	v.acks = r.Int16()
	v.acked = r.Ok()
	r.Int32() // timeout
	nTopics := arrayLen(&r, flex)
	for ti := 0; ti < nTopics && r.Ok(); ti++ {
		var name string
		var id [16]byte
		switch {
		case h.Version >= 13:
			copy(id[:], r.Span(16))
		case flex:
			name = r.CompactString()
		default:
			name = r.String()
		}
		nParts := arrayLen(&r, flex)
		for pi := 0; pi < nParts && r.Ok(); pi++ {
			p := producePartition{topic: name, topicID: id}
			p.partition = r.Int32()
			p.lenStart = pos()
			var n int
			if flex {
				n = int(r.Uvarint()) - 1
			} else {
				n = int(r.Int32())
			}
			p.recStart = pos()
			if n < 0 {
				p.null = true
			} else {
				r.Span(n)
			}
			p.recEnd = pos()
			if flex {
				skipTagsReader(&r)
			}
			if r.Ok() {
				v.parts = append(v.parts, p)
			}
		}
		if flex {
			skipTagsReader(&r)
		}
	}
	if flex {
		skipTagsReader(&r)
	}
	if !r.Ok() {
		return fmt.Errorf("%w: v%d truncated", errProduceParse, h.Version)
	}
	return nil
}

// arrayLen reads an array length and rejects counts the remaining bytes cannot hold.
func arrayLen(r *kbin.Reader, flex bool) int {
	var n int
	if flex {
		n = int(r.Uvarint()) - 1
	} else {
		n = int(r.Int32())
	}
	if n == -1 {
		return 0 // null array
	}
	if n < -1 || n > len(r.Src) {
		r.Span(len(r.Src) + 1) // marks the reader bad
		return 0
	}
	return n
}

// skipTagsReader skips a tagged-field section, rejecting counts the remaining bytes cannot hold.
func skipTagsReader(r *kbin.Reader) {
	n := int(r.Uvarint())
	if n > len(r.Src) {
		r.Span(len(r.Src) + 1)
		return
	}
	for i := 0; i < n && r.Ok(); i++ {
		r.Uvarint()
		r.Span(int(r.Uvarint()))
	}
}

// spliceRecords builds a new produce frame from frame with the records of parts[i] replaced by
// repl[i] (nil = keep). Length prefixes are rewritten in the request's own encoding.
func spliceRecords(dst, frame []byte, flex bool, parts []producePartition, repl [][]byte) []byte {
	prev := 0
	for i, p := range parts {
		if repl[i] == nil {
			continue
		}
		dst = append(dst, frame[prev:p.lenStart]...)
		if flex {
			dst = binary.AppendUvarint(dst, uint64(len(repl[i])+1))
		} else {
			dst = binary.BigEndian.AppendUint32(dst, uint32(len(repl[i])))
		}
		dst = append(dst, repl[i]...)
		prev = p.recEnd
	}
	dst = append(dst, frame[prev:]...)
	putSize(dst)
	return dst
}
