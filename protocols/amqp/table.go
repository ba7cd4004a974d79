package amqp

import (
	"encoding/binary"
	"errors"
	"fmt"
)

var errShort = errors.New("runs past the end of the frame")

// maxTableDepth bounds nested tables and arrays so a hostile frame cannot recurse the stack away.
const maxTableDepth = 64

// shortstr reads a short string (u8 length) at b[i:].
func shortstr(b []byte, i int) ([]byte, int, error) {
	if i >= len(b) {
		return nil, i, fmt.Errorf("short string: %w", errShort)
	}
	n := int(b[i])
	if i+1+n > len(b) {
		return nil, i, fmt.Errorf("short string of %d bytes: %w", n, errShort)
	}
	return b[i+1 : i+1+n], i + 1 + n, nil
}

// u32len reads a u32 length prefix at b[i:] and checks the bytes it announces are there.
func u32len(b []byte, i int) (int, error) {
	if i+4 > len(b) {
		return 0, errShort
	}
	n := binary.BigEndian.Uint32(b[i:])
	if uint64(n) > uint64(len(b)-i-4) {
		return 0, fmt.Errorf("%d-byte value: %w", n, errShort)
	}
	return int(n), nil
}

// fixedSize is the size of the fixed-width field values: RabbitMQ's type codes plus the spec-only
// U and L, so tables written by any client can be skipped.
func fixedSize(t byte) int {
	switch t {
	case 't', 'b', 'B':
		return 1
	case 's', 'u', 'U':
		return 2
	case 'I', 'i', 'f':
		return 4
	case 'l', 'L', 'd', 'T':
		return 8
	case 'D':
		return 5
	case 'V':
		return 0
	}
	return -1
}

// skipValue returns the index after the field value of type t at b[i:].
func skipValue(b []byte, i int, t byte, depth int) (int, error) {
	if n := fixedSize(t); n >= 0 {
		if i+n > len(b) {
			return i, fmt.Errorf("field type %q: %w", t, errShort)
		}
		return i + n, nil
	}
	switch t {
	case 'S', 'x':
		n, err := u32len(b, i)
		if err != nil {
			return i, fmt.Errorf("field type %q: %w", t, err)
		}
		return i + 4 + n, nil
	case 'F', 'A':
		if depth >= maxTableDepth {
			return i, errors.New("field tables or arrays nested too deep")
		}
		n, err := u32len(b, i)
		if err != nil {
			return i, fmt.Errorf("field type %q: %w", t, err)
		}
		inner := b[i+4 : i+4+n]
		if t == 'F' {
			err = walkTable(inner, depth+1, nil)
		}
		for j := 0; t == 'A' && j < len(inner) && err == nil; {
			j, err = skipValue(inner, j+1, inner[j], depth+1)
		}
		if err != nil {
			return i, err
		}
		return i + 4 + n, nil
	}
	return i, fmt.Errorf("unknown field type 0x%02x", t)
}

// walkTable checks that body (a table without its length prefix) is a well-formed sequence of
// entries and calls fn, when non-nil, with each key, type and value (value excludes the type
// octet; start is the entry's offset in body). fn returning false stops the walk.
func walkTable(body []byte, depth int, fn func(key []byte, typ byte, value []byte, start, end int) bool) error {
	for i := 0; i < len(body); {
		start := i
		key, j, err := shortstr(body, i)
		if err != nil {
			return fmt.Errorf("table key: %w", err)
		}
		if j >= len(body) {
			return fmt.Errorf("table entry %q: type: %w", key, errShort)
		}
		t := body[j]
		k, err := skipValue(body, j+1, t, depth)
		if err != nil {
			return fmt.Errorf("table entry %q: %w", key, err)
		}
		if fn != nil && !fn(key, t, body[j+1:k], start, k) {
			return nil
		}
		i = k
	}
	return nil
}

// skipTable returns the index after the table (u32 length + entries) at b[i:], checking every
// entry can be skipped.
func skipTable(b []byte, i int) (int, error) {
	n, err := u32len(b, i)
	if err != nil {
		return i, fmt.Errorf("table: %w", err)
	}
	if err := walkTable(b[i+4:i+4+n], 0, nil); err != nil {
		return i, err
	}
	return i + 4 + n, nil
}

// stringValue returns the text of a string-like field value (S longstr or x byte array).
func stringValue(typ byte, v []byte) ([]byte, bool) {
	if (typ == 'S' || typ == 'x') && len(v) >= 4 {
		return v[4:], true
	}
	return nil, false
}

// tableString finds key in table body and returns its text when it is a string.
func tableString(body []byte, key string) ([]byte, bool) {
	var out []byte
	var found bool
	walkTable(body, 0, func(k []byte, t byte, v []byte, _, _ int) bool {
		if string(k) != key {
			return true
		}
		out, found = stringValue(t, v)
		return false
	})
	return out, found
}
