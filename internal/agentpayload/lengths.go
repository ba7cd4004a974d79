package agentpayload

import (
	"encoding/binary"
	"fmt"
)

// maxDepth bounds nesting: the payload schema is four levels deep, and a decoder recursing once
// per byte of a hostile body would exhaust the stack.
const maxDepth = 32

// checkLengths walks a msgpack value without decoding it and refuses any array, map, string, bin
// or ext whose declared length exceeds the bytes left (every element takes at least one byte, so
// such a count cannot be honest), and nesting deeper than maxDepth: a few hostile bytes must not
// make the decoder allocate gigabytes or recurse without end.
func checkLengths(b []byte) error {
	stack := []int{1} // values still to read at each open level
	for len(stack) > 0 {
		if stack[len(stack)-1] == 0 {
			stack = stack[:len(stack)-1]
			continue
		}
		if len(b) == 0 {
			return fmt.Errorf("msgpack: truncated")
		}
		stack[len(stack)-1]--
		t := b[0]
		b = b[1:]
		var skip, items int
		switch {
		case t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3:
		case t >= 0x80 && t <= 0x8f:
			items = 2 * int(t&0x0f)
		case t >= 0x90 && t <= 0x9f:
			items = int(t & 0x0f)
		case t >= 0xa0 && t <= 0xbf:
			skip = int(t & 0x1f)
		default:
			n, hdr, err := sized(t, b)
			if err != nil {
				return err
			}
			b = b[hdr:]
			switch t {
			case 0xdc, 0xdd:
				items = n
			case 0xde, 0xdf:
				items = 2 * n
			default:
				skip = n
			}
		}
		if skip > len(b) {
			return fmt.Errorf("msgpack: value of %d bytes with %d left", skip, len(b))
		}
		b = b[skip:]
		if items > len(b) {
			return fmt.Errorf("msgpack: container of %d items with %d bytes left", items, len(b))
		}
		if items > 0 {
			if len(stack) >= maxDepth {
				return fmt.Errorf("msgpack: nested deeper than %d", maxDepth)
			}
			stack = append(stack, items)
		}
	}
	if len(b) != 0 {
		return fmt.Errorf("msgpack: %d bytes after the value", len(b))
	}
	return nil
}

// sized returns, for the multi-byte type t, its length or count n and how many header bytes
// after t carry it (for fixed-size types, n is the payload size and hdr 0).
func sized(t byte, b []byte) (n, hdr int, err error) {
	read := func(w int) (int, error) {
		if len(b) < w {
			return 0, fmt.Errorf("msgpack: truncated header of type 0x%02x", t)
		}
		switch w {
		case 1:
			return int(b[0]), nil
		case 2:
			return int(binary.BigEndian.Uint16(b)), nil
		}
		return int(binary.BigEndian.Uint32(b)), nil
	}
	switch t {
	case 0xcc, 0xd0:
		return 1, 0, nil
	case 0xcd, 0xd1:
		return 2, 0, nil
	case 0xca, 0xce, 0xd2:
		return 4, 0, nil
	case 0xcb, 0xcf, 0xd3:
		return 8, 0, nil
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext: type byte + 1, 2, 4, 8, 16
		return 1 + 1<<(t-0xd4), 0, nil
	case 0xc4, 0xd9:
		n, err = read(1)
		return n, 1, err
	case 0xc5, 0xda, 0xdc, 0xde:
		n, err = read(2)
		return n, 2, err
	case 0xc6, 0xdb, 0xdd, 0xdf:
		n, err = read(4)
		return n, 4, err
	case 0xc7:
		n, err = read(1)
		return n + 1, 1, err
	case 0xc8:
		n, err = read(2)
		return n + 1, 2, err
	case 0xc9:
		n, err = read(4)
		return n + 1, 4, err
	}
	return 0, 0, fmt.Errorf("msgpack: invalid type byte 0x%02x", t)
}
