package aws

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// This file is a minimal JSON scanner that reports byte ranges, so the rewriters can change one
// member of a request or response and leave every other byte as the client or AWS wrote it.

var errJSON = errors.New("malformed JSON")

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the index just past the JSON value starting at b[i] (after whitespace).
func skipValue(b []byte, i int) (int, error) {
	i = skipWS(b, i)
	if i >= len(b) {
		return 0, fmt.Errorf("%w: value expected at offset %d", errJSON, i)
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				j, err := skipString(b, i)
				if err != nil {
					return 0, err
				}
				i = j
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, nil
				}
			}
			i++
		}
		return 0, fmt.Errorf("%w: unterminated container", errJSON)
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\n' && b[j] != '\r' && b[j] != '\t' {
			j++
		}
		if j == i {
			return 0, fmt.Errorf("%w: unexpected %q at offset %d", errJSON, b[i], i)
		}
		return j, nil
	}
}

// skipString returns the index just past the string whose opening quote is b[i]. Message bodies
// make most of a document's bytes, so it jumps from quote to quote with IndexByte.
func skipString(b []byte, i int) (int, error) {
	for j := i + 1; j < len(b); {
		q := bytes.IndexByte(b[j:], '"')
		if q < 0 {
			break
		}
		bs := bytes.IndexByte(b[j:j+q], '\\')
		if bs < 0 {
			return j + q + 1, nil
		}
		j += bs + 2 // the escaped byte cannot end the string
	}
	return 0, fmt.Errorf("%w: unterminated string", errJSON)
}

// member is one member of a JSON object: Key decoded (pointing into the document unless it had
// escapes, so scanning does not allocate per key), value at b[VS:VE], the whole member (key
// through value) at b[MS:VE].
type member struct {
	Key    []byte
	MS, VS int
	VE     int
}

// is reports whether the member's name is s (the conversion does not allocate).
func (m *member) is(s string) bool { return string(m.Key) == s }

// objectMembers lists the members of the object whose '{' is at or after b[i].
// It returns the members and the index of the closing '}'.
func objectMembers(b []byte, i int) ([]member, int, error) {
	i = skipWS(b, i)
	if i >= len(b) || b[i] != '{' {
		return nil, 0, fmt.Errorf("%w: object expected at offset %d", errJSON, i)
	}
	ms := make([]member, 0, 4)
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return nil, i, nil
	}
	for {
		i = skipWS(b, i)
		if i >= len(b) || b[i] != '"' {
			return nil, 0, fmt.Errorf("%w: member name expected at offset %d", errJSON, i)
		}
		ke, err := skipString(b, i)
		if err != nil {
			return nil, 0, err
		}
		key, err := decodeKey(b[i:ke])
		if err != nil {
			return nil, 0, err
		}
		j := skipWS(b, ke)
		if j >= len(b) || b[j] != ':' {
			return nil, 0, fmt.Errorf("%w: ':' expected at offset %d", errJSON, j)
		}
		vs := skipWS(b, j+1)
		ve, err := skipValue(b, vs)
		if err != nil {
			return nil, 0, err
		}
		ms = append(ms, member{Key: key, MS: i, VS: vs, VE: ve})
		i = skipWS(b, ve)
		if i >= len(b) {
			return nil, 0, fmt.Errorf("%w: unterminated object", errJSON)
		}
		if b[i] == '}' {
			return ms, i, nil
		}
		if b[i] != ',' {
			return nil, 0, fmt.Errorf("%w: ',' expected at offset %d", errJSON, i)
		}
		i++
	}
}

// arrayElems lists the [start,end) ranges of the elements of the array at or after b[i].
func arrayElems(b []byte, i int) ([][2]int, error) {
	i = skipWS(b, i)
	if i >= len(b) || b[i] != '[' {
		return nil, fmt.Errorf("%w: array expected at offset %d", errJSON, i)
	}
	var es [][2]int
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == ']' {
		return nil, nil
	}
	for {
		s := skipWS(b, i)
		e, err := skipValue(b, s)
		if err != nil {
			return nil, err
		}
		es = append(es, [2]int{s, e})
		i = skipWS(b, e)
		if i >= len(b) {
			return nil, fmt.Errorf("%w: unterminated array", errJSON)
		}
		if b[i] == ']' {
			return es, nil
		}
		if b[i] != ',' {
			return nil, fmt.Errorf("%w: ',' expected at offset %d", errJSON, i)
		}
		i++
	}
}

func decodeKey(raw []byte) ([]byte, error) {
	if !slices.Contains(raw, '\\') {
		return raw[1 : len(raw)-1], nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("%w: member name: %w", errJSON, err)
	}
	return []byte(s), nil
}

func find(ms []member, key string) *member {
	for i := range ms {
		if ms[i].is(key) {
			return &ms[i]
		}
	}
	return nil
}

// jsonString decodes the string value at b[m.VS:m.VE]; ok is false when it is not a string.
func jsonString(b []byte, m *member) (string, bool) {
	if m == nil || b[m.VS] != '"' {
		return "", false
	}
	raw := b[m.VS:m.VE]
	if !slices.Contains(raw, '\\') {
		return string(raw[1 : len(raw)-1]), true
	}
	if s, ok := unescapeSimple(raw); ok {
		return s, true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// unescapeSimple decodes a quoted JSON string made of printable ASCII with the one-letter escapes
// (a `_datadog` carrier in a received message, typically) as encoding/json does, without
// reflection; ok is false for anything else (\u escapes, non-ASCII or control bytes, bad escapes),
// which json.Unmarshal then decodes or refuses.
func unescapeSimple(raw []byte) (string, bool) {
	out, _, ok := decodeSimple(raw, make([]byte, 0, len(raw)), false)
	if !ok {
		return "", false
	}
	return string(out), true
}

// unescapedLenSimple is len of unescapeSimple's result, without building it; ok as unescapeSimple's.
func unescapedLenSimple(raw []byte) (int, bool) {
	_, n, ok := decodeSimple(raw, nil, true)
	return n, ok
}

// decodeSimple is unescapeSimple's decoder: it appends the decoded bytes to out, or with
// countOnly only counts them in n.
func decodeSimple(raw, out []byte, countOnly bool) (_ []byte, n int, ok bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return out, 0, false
	}
	in := raw[1 : len(raw)-1]
	for i := 0; i < len(in); i++ {
		c := in[i]
		if c < 0x20 || c >= 0x80 || c == '"' {
			return out, 0, false
		}
		if c == '\\' {
			if i++; i == len(in) {
				return out, 0, false
			}
			switch in[i] {
			case '"', '\\', '/':
				c = in[i]
			case 'b':
				c = '\b'
			case 'f':
				c = '\f'
			case 'n':
				c = '\n'
			case 'r':
				c = '\r'
			case 't':
				c = '\t'
			default:
				return out, 0, false
			}
		}
		if !countOnly {
			out = append(out, c)
		}
		n++
	}
	return out, n, true
}

// jsonStringLen is len of jsonString's value (0 when m is not a string), without copying a
// string that has no escapes.
func jsonStringLen(b []byte, m *member) int {
	if m == nil || b[m.VS] != '"' {
		return 0
	}
	raw := b[m.VS:m.VE]
	if !slices.Contains(raw, '\\') {
		return len(raw) - 2
	}
	if n, ok := unescapedLenSimple(raw); ok {
		return n
	}
	s, _ := jsonString(b, m)
	return len(s)
}

// edit replaces b[S:E] with New.
type edit struct {
	S, E int
	New  []byte
}

// applyEdits applies non-overlapping edits to b, writing into a new slice.
func applyEdits(dst, b []byte, eds []edit) []byte {
	slices.SortFunc(eds, func(x, y edit) int { return x.S - y.S })
	last := 0
	for _, e := range eds {
		if e.S < last || e.E < e.S || e.E > len(b) {
			continue // overlapping edits only come from duplicate members; keep the first
		}
		dst = append(dst, b[last:e.S]...)
		dst = append(dst, e.New...)
		last = e.E
	}
	return append(dst, b[last:]...)
}

// removeMember returns the edit that deletes member m (with the comma that joins it) from the
// object whose members are ms and closing brace at end.
func removeMember(b []byte, ms []member, idx int) edit {
	m := ms[idx]
	if idx+1 < len(ms) {
		return edit{S: m.MS, E: ms[idx+1].MS}
	}
	if idx > 0 {
		// last member: remove from the end of the previous value
		return edit{S: ms[idx-1].VE, E: m.VE}
	}
	return edit{S: m.MS, E: m.VE}
}

// appendMember returns the edit that adds `"key":value` at the end of an object.
func appendMember(ms []member, end int, key string, value []byte) edit {
	var nb []byte
	if len(ms) > 0 {
		nb = append(nb, ',')
	}
	nb = appendJSONString(nb, key)
	nb = append(nb, ':')
	nb = append(nb, value...)
	return edit{S: end, E: end, New: nb}
}

// appendJSONString appends s as a JSON string without HTML escaping.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == '\r':
			dst = append(dst, '\\', 'r')
		case c == '\t':
			dst = append(dst, '\\', 't')
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}

// object is one object element of an array: its members, '{' at Start and '}' at End.
type object struct {
	ms         []member
	Start, End int
}

// arrayObjects decodes the array member key of an object into its object elements; nil when the
// member is absent or not an array.
func arrayObjects(b []byte, ms []member, key string) ([]object, error) {
	m := find(ms, key)
	if m == nil || b[m.VS] != '[' {
		return nil, nil
	}
	els, err := arrayElems(b, m.VS)
	if err != nil {
		return nil, err
	}
	out := make([]object, 0, len(els))
	for _, el := range els {
		oms, end, err := objectMembers(b, el[0])
		if err != nil {
			return nil, err
		}
		out = append(out, object{ms: oms, Start: el[0], End: end})
	}
	return out, nil
}
