package aws

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// orderedMembers reads the members of the JSON object b with encoding/json, in order.
func orderedMembers(b []byte) (keys []string, values []json.RawMessage, ok bool) {
	d := json.NewDecoder(bytes.NewReader(b))
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, false
	}
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			return nil, nil, false
		}
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			return nil, nil, false
		}
		keys, values = append(keys, tok.(string)), append(values, v)
	}
	return keys, values, true
}

// FuzzJSONScan: the byte-range scanner the SQS, SNS and Kinesis JSON rewriters read requests and
// answers with (jsonscan.go) reads every valid JSON object as encoding/json does: the same
// members in the same order, each value's bytes a valid JSON value that encoding/json reads the
// same, a string member's text (jsonString, jsonStringLen) as encoding/json decodes it, and an
// array's elements (arrayElems) likewise.
func FuzzJSONScan(f *testing.F) {
	for _, svc := range []struct{ name, wire string }{{"sqs", "json10"}, {"kinesis", "json11"}} {
		for _, rr := range captured(f, svc.name, svc.wire) {
			f.Add(rr[0])
			f.Add(rr[1])
		}
	}
	f.Add([]byte(`{"a\u0041":"x\"\\\/\b\f\n\r\t\u00e9","b":[1,{"c":[]},"]"],"d":null,"e":-1.5e3,"f":{},"g":true}`))
	f.Add([]byte(` { "k" : "v" , "k" : "w" } `))
	f.Fuzz(func(t *testing.T, b []byte) {
		ms, end, err := objectMembers(b, 0)
		if !json.Valid(b) || !utf8.Valid(b) {
			return
		}
		keys, values, ok := orderedMembers(b)
		if !ok {
			if err == nil && bytes.HasPrefix(bytes.TrimLeft(b, " \t\r\n"), []byte("{")) {
				t.Fatalf("%q: scanned, encoding/json reads no object", b)
			}
			return
		}
		if err != nil {
			t.Fatalf("%q: valid JSON object, the scanner refuses it: %v", b, err)
		}
		if b[end] != '}' || !json.Valid(b[:end+1]) {
			t.Fatalf("%q: object end at %d", b, end)
		}
		if len(ms) != len(keys) {
			t.Fatalf("%q: scanned %d members, encoding/json %d", b, len(ms), len(keys))
		}
		for i := range ms {
			m := &ms[i]
			raw := b[m.VS:m.VE]
			if string(m.Key) != keys[i] || !bytes.Equal(raw, values[i]) {
				t.Fatalf("%q: member %d scanned %q=%q, encoding/json %q=%q", b, i, m.Key, raw, keys[i], values[i])
			}
			var s string
			isStr := raw[0] == '"' && json.Unmarshal(raw, &s) == nil // null reads into a string too
			got, gotOK := jsonString(b, m)
			if gotOK != isStr || got != s || jsonStringLen(b, m) != len(s) {
				t.Fatalf("%q: member %q: jsonString %q %v (len %d), encoding/json %q %v", b, m.Key, got, gotOK, jsonStringLen(b, m), s, isStr)
			}
			var arr []json.RawMessage
			if json.Unmarshal(raw, &arr) == nil && raw[0] == '[' {
				es, err := arrayElems(b, m.VS)
				if err != nil || len(es) != len(arr) {
					t.Fatalf("%q: member %q: %d elements scanned (%v), encoding/json %d", b, m.Key, len(es), err, len(arr))
				}
				for j, e := range es {
					if !bytes.Equal(bytes.TrimSpace(b[e[0]:e[1]]), bytes.TrimSpace(arr[j])) {
						t.Fatalf("%q: member %q element %d: scanned %q, encoding/json %q", b, m.Key, j, b[e[0]:e[1]], arr[j])
					}
				}
			}
		}
	})
}
