package aws

import (
	"errors"
	"fmt"
	"math"
)

// A read-only CBOR (RFC 8949) decoder for the Kinesis bodies Java SDKs send by default: the proxy
// only reads them to record checkpoints and forwards the bytes unchanged, so there is no encoder.
// Definite and indefinite lengths are both handled (Jackson writes indefinite maps and arrays).

var errCBOR = errors.New("malformed CBOR")

const maxCBORDepth = 32

// cborBreak marks the end of an indefinite-length item.
type cborBreak struct{}

type cborDec struct {
	b []byte
	i int
}

// cborDecode decodes one item: map[string]any, []any, []byte, string, uint64, int64, float64,
// bool or nil; a tagged item decodes to its content.
func cborDecode(b []byte) (any, error) {
	d := &cborDec{b: b}
	v, err := d.item(0)
	if err != nil {
		return nil, err
	}
	if _, brk := v.(cborBreak); brk {
		return nil, fmt.Errorf("%w: stray break", errCBOR)
	}
	return v, nil
}

func (d *cborDec) need(n uint64) error {
	if n > uint64(len(d.b)-d.i) {
		return fmt.Errorf("%w: %d bytes needed at offset %d, %d left", errCBOR, n, d.i, len(d.b)-d.i)
	}
	return nil
}

// head reads an initial byte and its argument; indef reports length 31 (indefinite).
func (d *cborDec) head() (major byte, info byte, arg uint64, err error) {
	if err = d.need(1); err != nil {
		return
	}
	ib := d.b[d.i]
	d.i++
	major, info = ib>>5, ib&0x1f
	switch {
	case info < 24:
		arg = uint64(info)
	case info <= 27:
		n := uint64(1) << (info - 24)
		if err = d.need(n); err != nil {
			return
		}
		for k := uint64(0); k < n; k++ {
			arg = arg<<8 | uint64(d.b[d.i])
			d.i++
		}
	case info == 31:
	default:
		err = fmt.Errorf("%w: reserved additional information %d", errCBOR, info)
	}
	return
}

func (d *cborDec) item(depth int) (any, error) {
	if depth > maxCBORDepth {
		return nil, fmt.Errorf("%w: nested deeper than %d", errCBOR, maxCBORDepth)
	}
	start := d.i
	major, info, arg, err := d.head()
	if err != nil {
		return nil, err
	}
	indef := info == 31
	switch major {
	case 0:
		if indef {
			return nil, fmt.Errorf("%w: indefinite integer", errCBOR)
		}
		return arg, nil
	case 1:
		if indef || arg > math.MaxInt64 {
			return nil, fmt.Errorf("%w: negative integer out of range", errCBOR)
		}
		return -1 - int64(arg), nil
	case 2, 3:
		var out []byte
		if indef {
			for {
				if err := d.need(1); err != nil {
					return nil, err
				}
				if d.b[d.i] == 0xff {
					d.i++
					break
				}
				m, inf, n, err := d.head()
				if err != nil {
					return nil, err
				}
				if m != major || inf == 31 {
					return nil, fmt.Errorf("%w: bad chunk in indefinite string at %d", errCBOR, start)
				}
				if err := d.need(n); err != nil {
					return nil, err
				}
				out = append(out, d.b[d.i:d.i+int(n)]...)
				d.i += int(n)
			}
		} else {
			if err := d.need(arg); err != nil {
				return nil, err
			}
			out = d.b[d.i : d.i+int(arg)]
			d.i += int(arg)
		}
		if major == 3 {
			return string(out), nil
		}
		return out, nil
	case 4:
		var out []any
		for k := uint64(0); indef || k < arg; k++ {
			if !indef {
				if err := d.need(1); err != nil { // every element takes at least a byte
					return nil, err
				}
			}
			v, err := d.item(depth + 1)
			if err != nil {
				return nil, err
			}
			if _, brk := v.(cborBreak); brk {
				if !indef {
					return nil, fmt.Errorf("%w: break inside a definite array", errCBOR)
				}
				break
			}
			out = append(out, v)
		}
		return out, nil
	case 5:
		out := map[string]any{}
		for k := uint64(0); indef || k < arg; k++ {
			kv, err := d.item(depth + 1)
			if err != nil {
				return nil, err
			}
			if _, brk := kv.(cborBreak); brk {
				if !indef {
					return nil, fmt.Errorf("%w: break inside a definite map", errCBOR)
				}
				break
			}
			key, ok := kv.(string)
			if !ok {
				return nil, fmt.Errorf("%w: map key %T is not text", errCBOR, kv)
			}
			v, err := d.item(depth + 1)
			if err != nil {
				return nil, err
			}
			if _, brk := v.(cborBreak); brk {
				return nil, fmt.Errorf("%w: map ends after a key", errCBOR)
			}
			out[key] = v
		}
		return out, nil
	case 6:
		return d.item(depth + 1) // the tag's meaning (e.g. 1, epoch time) is the caller's
	default: // 7
		switch {
		case indef:
			return cborBreak{}, nil
		case info == 20:
			return false, nil
		case info == 21:
			return true, nil
		case info == 22, info == 23:
			return nil, nil
		case info == 25:
			return halfFloat(uint16(arg)), nil
		case info == 26:
			return float64(math.Float32frombits(uint32(arg))), nil
		case info == 27:
			return math.Float64frombits(arg), nil
		}
		return nil, nil // other simple values carry nothing the proxy reads
	}
}

// cborRecordData is where each record's Data item lies in a GetRecords answer doc: by the
// Records array's index, the span of the record's Data value (its last, as cborDecode keeps a
// repeated key's last), tags included; [0 0] where the element is no map or has no Data. ok is
// false when doc is not a map whose Records member is an array.
func cborRecordData(doc []byte) (spans [][2]int, ok bool) {
	d := &cborDec{b: doc}
	recs := [2]int{}
	if d.mapSpans(0, func(key string, s, e int) {
		if key == "Records" {
			recs = [2]int{s, e}
		}
	}) != nil || recs[1] == 0 {
		return nil, false
	}
	d = &cborDec{b: doc[:recs[1]], i: recs[0]}
	err := d.arraySpans(1, func(s, e int) {
		rd := &cborDec{b: doc[:e], i: s}
		var data [2]int
		rd.mapSpans(2, func(key string, s, e int) {
			if key == "Data" {
				data = [2]int{s, e}
			}
		})
		spans = append(spans, data)
	})
	return spans, err == nil
}

// skipTags reads past the tags before an item (cborDecode reads a tagged item as its content).
func (d *cborDec) skipTags() error {
	for {
		if err := d.need(1); err != nil {
			return err
		}
		if d.b[d.i]>>5 != 6 {
			return nil
		}
		if _, _, _, err := d.head(); err != nil {
			return err
		}
	}
}

// mapSpans calls fn with each key of the map item at d.i and the span of its value.
func (d *cborDec) mapSpans(depth int, fn func(key string, s, e int)) error {
	if err := d.skipTags(); err != nil {
		return err
	}
	major, info, arg, err := d.head()
	if err != nil {
		return err
	}
	if major != 5 {
		return fmt.Errorf("%w: major type %d, not a map", errCBOR, major)
	}
	for k := uint64(0); info == 31 || k < arg; k++ {
		kv, err := d.item(depth + 1)
		if err != nil {
			return err
		}
		if _, brk := kv.(cborBreak); brk {
			if info != 31 {
				return fmt.Errorf("%w: break inside a definite map", errCBOR)
			}
			return nil
		}
		key, ok := kv.(string)
		if !ok {
			return fmt.Errorf("%w: map key %T is not text", errCBOR, kv)
		}
		s := d.i
		v, err := d.item(depth + 1)
		if err != nil {
			return err
		}
		if _, brk := v.(cborBreak); brk {
			return fmt.Errorf("%w: map ends after a key", errCBOR)
		}
		fn(key, s, d.i)
	}
	return nil
}

// arraySpans calls fn with the span of each element of the array item at d.i.
func (d *cborDec) arraySpans(depth int, fn func(s, e int)) error {
	if err := d.skipTags(); err != nil {
		return err
	}
	major, info, arg, err := d.head()
	if err != nil {
		return err
	}
	if major != 4 {
		return fmt.Errorf("%w: major type %d, not an array", errCBOR, major)
	}
	for k := uint64(0); info == 31 || k < arg; k++ {
		s := d.i
		v, err := d.item(depth + 1)
		if err != nil {
			return err
		}
		if _, brk := v.(cborBreak); brk {
			if info != 31 {
				return fmt.Errorf("%w: break inside a definite array", errCBOR)
			}
			return nil
		}
		fn(s, d.i)
	}
	return nil
}

func halfFloat(h uint16) float64 {
	exp := int(h>>10) & 0x1f
	mant := float64(h & 0x3ff)
	var v float64
	switch exp {
	case 0:
		v = math.Ldexp(mant, -24)
	case 31:
		if mant == 0 {
			v = math.Inf(1)
		} else {
			v = math.NaN()
		}
	default:
		v = math.Ldexp(mant+1024, exp-25)
	}
	if h&0x8000 != 0 {
		return -v
	}
	return v
}

// cborNumber converts a decoded number to float64.
func cborNumber(v any) (float64, bool) {
	switch n := v.(type) {
	case uint64:
		return float64(n), true
	case int64:
		return float64(n), true
	case float64:
		return n, true
	}
	return 0, false
}
