package amqp

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// Property flags of the Basic class content header that come before the headers table.
const (
	flagContentType     = 0x8000
	flagContentEncoding = 0x4000
	flagHeaders         = 0x2000
)

// contentHeader locates the parts of a content-header payload the proxy reads or splices. Offsets
// are into the payload.
type contentHeader struct {
	BodySize uint64
	// TableAt is where the headers table (u32 length + entries) starts, or where it would be
	// inserted when HasTable is false; TableEnd is the index after it.
	TableAt, TableEnd int
	HasTable          bool
	// CtxAt..CtxEnd is an existing dd-pathway-ctx-base64 entry inside the table (CtxEnd 0 when none);
	// Ctx is its text when it is a string.
	CtxAt, CtxEnd int
	Ctx           []byte
	// CtxTwice: the table has the entry more than once; the proxy then leaves the header alone.
	CtxTwice bool
}

// TableBytes is the size of the headers table's entries (0 when there is none).
func (h *contentHeader) TableBytes() int {
	if !h.HasTable {
		return 0
	}
	return h.TableEnd - h.TableAt - 4
}

var errNotBasic = errors.New("content header is not of the Basic class")

// parseContentHeader reads a content-header payload: class u16, weight u16, body size u64,
// property flag words (bit 0 = another word follows), then property values in flag order. Only
// the properties before and including the headers table are read.
func parseContentHeader(p []byte) (contentHeader, error) {
	var h contentHeader
	if len(p) < 14 {
		return h, fmt.Errorf("content header of %d bytes: %w", len(p), errShort)
	}
	if binary.BigEndian.Uint16(p) != classBasic {
		return h, fmt.Errorf("%w (class %d)", errNotBasic, binary.BigEndian.Uint16(p))
	}
	h.BodySize = binary.BigEndian.Uint64(p[4:])
	flags := binary.BigEndian.Uint16(p[12:])
	i := 14
	for w := flags; w&1 != 0; {
		if i+2 > len(p) {
			return h, fmt.Errorf("property flags: %w", errShort)
		}
		w = binary.BigEndian.Uint16(p[i:])
		i += 2
	}
	var err error
	for _, f := range [2]uint16{flagContentType, flagContentEncoding} {
		if flags&f != 0 {
			if _, i, err = shortstr(p, i); err != nil {
				return h, fmt.Errorf("property 0x%04x: %w", f, err)
			}
		}
	}
	h.TableAt, h.TableEnd = i, i
	if flags&flagHeaders == 0 {
		return h, nil
	}
	h.HasTable = true
	n, err := u32len(p, i)
	if err != nil {
		return h, fmt.Errorf("headers table: %w", err)
	}
	body := p[i+4 : i+4+n]
	err = walkTable(body, 0, func(k []byte, t byte, v []byte, start, end int) bool {
		if string(k) == pathway.HeaderKey {
			if h.CtxEnd != 0 {
				h.CtxTwice = true
				return true
			}
			h.CtxAt, h.CtxEnd = i+4+start, i+4+end
			h.Ctx, _ = stringValue(t, v)
		}
		return true
	})
	if err != nil {
		return h, fmt.Errorf("headers table: %w", err)
	}
	h.TableEnd = i + 4 + n
	return h, nil
}

// ctxEntryLen is the size of a `dd-pathway-ctx-base64` S entry with a value of n bytes.
func ctxEntryLen(n int) int { return 1 + len(pathway.HeaderKey) + 1 + 4 + n }

// splicedLen is the payload size after spliceHeader with a value of n bytes.
func splicedLen(p []byte, h *contentHeader, n int) int {
	grow := ctxEntryLen(n)
	if !h.HasTable {
		grow += 4
	}
	if h.CtxEnd != 0 {
		grow -= h.CtxEnd - h.CtxAt
	}
	return len(p) + grow
}

// spliceHeader appends to dst the payload p with the pathway entry set to value in its headers
// table: appended to an existing table (an existing entry is removed first), or a new table with
// its flag bit when there is none. Every other byte is kept as it was; the body size is untouched.
func spliceHeader(dst, p []byte, h *contentHeader, value []byte) []byte {
	entry := ctxEntryLen(len(value))
	if !h.HasTable {
		start := len(dst)
		dst = append(dst, p[:h.TableAt]...)
		flags := binary.BigEndian.Uint16(p[12:])
		binary.BigEndian.PutUint16(dst[start+12:], flags|flagHeaders)
		dst = binary.BigEndian.AppendUint32(dst, uint32(entry))
		dst = appendCtxEntry(dst, value)
		return append(dst, p[h.TableAt:]...)
	}
	size := h.TableEnd - h.TableAt - 4 + entry
	dst = append(dst, p[:h.TableAt]...)
	if h.CtxEnd != 0 {
		size -= h.CtxEnd - h.CtxAt
		dst = binary.BigEndian.AppendUint32(dst, uint32(size))
		dst = append(dst, p[h.TableAt+4:h.CtxAt]...)
		dst = append(dst, p[h.CtxEnd:h.TableEnd]...)
	} else {
		dst = binary.BigEndian.AppendUint32(dst, uint32(size))
		dst = append(dst, p[h.TableAt+4:h.TableEnd]...)
	}
	dst = appendCtxEntry(dst, value)
	return append(dst, p[h.TableEnd:]...)
}

func appendCtxEntry(dst, value []byte) []byte {
	dst = append(dst, byte(len(pathway.HeaderKey)))
	dst = append(dst, pathway.HeaderKey...)
	dst = append(dst, 'S')
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(value)))
	return append(dst, value...)
}

// stripCtx appends to dst the payload p without its pathway entry (h.CtxEnd != 0); every other
// byte is kept, the table's length shrinks by the entry's.
func stripCtx(dst, p []byte, h *contentHeader) []byte {
	dst = append(dst, p[:h.TableAt]...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(h.TableEnd-h.TableAt-4-(h.CtxEnd-h.CtxAt)))
	dst = append(dst, p[h.TableAt+4:h.CtxAt]...)
	return append(dst, p[h.CtxEnd:]...)
}
