package aws

import (
	"net/url"
	"strings"
)

// form is a Query-protocol body kept as its raw pairs, so a rewrite can replace or append pairs and
// leave the rest of the body exactly as the client encoded it.
type form struct {
	raw  []string          // "k=v" as sent
	vals map[string]string // decoded; a repeated key keeps its first value
	idx  map[string]int    // key -> index in raw
	add  []string          // pairs to append
	repl map[int]string    // raw index -> replacement pair, or "" to drop it
}

func parseForm(body []byte) (*form, error) {
	f := &form{vals: map[string]string{}, idx: map[string]int{}}
	if len(body) == 0 {
		return f, nil
	}
	f.raw = strings.Split(string(body), "&")
	for i, p := range f.raw {
		k, v, _ := strings.Cut(p, "=")
		dk, err := url.QueryUnescape(k)
		if err != nil {
			return nil, err
		}
		dv, err := url.QueryUnescape(v)
		if err != nil {
			return nil, err
		}
		if _, dup := f.vals[dk]; !dup {
			f.vals[dk] = dv
			f.idx[dk] = i
		}
	}
	return f, nil
}

func (f *form) get(k string) string { return f.vals[k] }

// set replaces k's value, or appends k when absent.
func (f *form) set(k, v string) {
	pair := url.QueryEscape(k) + "=" + url.QueryEscape(v)
	if i, ok := f.idx[k]; ok {
		if f.repl == nil {
			f.repl = map[int]string{}
		}
		f.repl[i] = pair
	} else {
		f.add = append(f.add, pair)
	}
	f.vals[k] = v
}

// del drops the pair sent under k, if there is one.
func (f *form) del(k string) {
	i, ok := f.idx[k]
	if !ok {
		return
	}
	if f.repl == nil {
		f.repl = map[int]string{}
	}
	f.repl[i] = ""
	delete(f.vals, k)
	delete(f.idx, k)
}

func (f *form) changed() bool { return len(f.add) > 0 || len(f.repl) > 0 }

// encode returns the body with replacements and appended pairs.
func (f *form) encode() []byte {
	var b strings.Builder
	first := true
	for i, p := range f.raw {
		if r, ok := f.repl[i]; ok {
			if p = r; p == "" {
				continue // dropped
			}
		}
		if !first {
			b.WriteByte('&')
		}
		first = false
		b.WriteString(p)
	}
	for _, p := range f.add {
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(p)
	}
	return []byte(b.String())
}

// queryAttrs reads the attributes under prefix ("MessageAttribute." for SQS,
// "MessageAttributes.entry." for SNS), numbered 1.. contiguously.
func (f *form) queryAttrs(prefix string) []qattr {
	var out []qattr
	for n := 1; ; n++ {
		p := prefix + itoa(n) + "."
		name, ok := f.vals[p+"Name"]
		if !ok {
			return out
		}
		a := qattr{N: n, attr: attr{Name: name, DataType: f.vals[p+"Value.DataType"]}}
		if s, ok := f.vals[p+"Value.StringValue"]; ok {
			a.String = &s
		} else if b, ok := f.vals[p+"Value.BinaryValue"]; ok {
			a.Binary, _ = decodeB64(b)
		}
		out = append(out, a)
	}
}

type qattr struct {
	N int
	attr
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}
