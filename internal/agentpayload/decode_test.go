package agentpayload

import (
	"bytes"
	"compress/gzip"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/vmihailenco/msgpack/v5"
)

func gz(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	return buf.Bytes()
}

// sketch1 is the spec's {1.0} sketch.
var sketch1 = []byte{0x0a, 0x12, 0x09, 0, 0, 0, 0, 0, 0x40, 0xf0, 0x3f, 0x11, 0x00, 0xd8, 0x8a, 0xfe, 0x9e, 0x04, 0xfe, 0x3f, 0x12, 0x0c, 0x12, 0x08, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x18, 0x02, 0x1a, 0x00}

func goodPayload() map[string]any {
	return map[string]any{
		"Env": "e", "Service": "s", "TracerVersion": "v", "Lang": "go", "Version": "", "ProcessTags": []string{}, "ProductMask": 2,
		"Stats": []any{map[string]any{"Start": uint64(1), "Duration": uint64(10), "Backlogs": []any{map[string]any{"Tags": []string{"type:kafka_produce"}, "Value": 4}},
			"Transactions": []byte{}, "TransactionCheckpointIds": []byte{},
			"Stats": []any{map[string]any{"EdgeTags": []string{"direction:out"}, "Hash": uint64(9), "ParentHash": uint64(0),
				"PathwayLatency": sketch1, "EdgeLatency": sketch1, "PayloadSize": sketch1, "TimestampType": "current"}}}},
	}
}

// TestDecodePayloadStrict: the decoder accepts the spec's shape and names what is wrong otherwise.
func TestDecodePayloadStrict(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(m map[string]any)
		want string
	}{
		{"good", func(map[string]any) {}, ""},
		{"missing Service", func(m map[string]any) { delete(m, "Service") }, `"Service" missing`},
		{"unknown key", func(m map[string]any) { m["Servce"] = "x" }, "Servce"},
		{"sketch as str", func(m map[string]any) {
			m["Stats"].([]any)[0].(map[string]any)["Stats"].([]any)[0].(map[string]any)["EdgeLatency"] = string(sketch1)
		}, "want msgpack bin"},
		{"bad sketch", func(m map[string]any) {
			m["Stats"].([]any)[0].(map[string]any)["Stats"].([]any)[0].(map[string]any)["PayloadSize"] = []byte{0xff}
		}, "PayloadSize"},
		{"missing TimestampType", func(m map[string]any) {
			delete(m["Stats"].([]any)[0].(map[string]any)["Stats"].([]any)[0].(map[string]any), "TimestampType")
		}, "TimestampType"},
		// nil where dd-trace-go's msgp decoder reads an array or a bin header: its ReadArrayHeader
		// and ReadBytes refuse msgpack nil (internal/datastreams/payload_msgp.go, DecodeMsg).
		{"nil EdgeTags", func(m map[string]any) {
			m["Stats"].([]any)[0].(map[string]any)["Stats"].([]any)[0].(map[string]any)["EdgeTags"] = nil
		}, "EdgeTags is nil"},
		{"nil Backlogs", func(m map[string]any) { m["Stats"].([]any)[0].(map[string]any)["Backlogs"] = nil }, "Backlogs is nil"},
		{"nil backlog Tags", func(m map[string]any) {
			m["Stats"].([]any)[0].(map[string]any)["Backlogs"].([]any)[0].(map[string]any)["Tags"] = nil
		}, "Tags is nil"},
		{"nil bucket Stats", func(m map[string]any) { m["Stats"].([]any)[0].(map[string]any)["Stats"] = nil }, "Stats is nil"},
		{"nil payload Stats", func(m map[string]any) { m["Stats"] = nil }, "Stats is nil"},
		{"nil ProcessTags", func(m map[string]any) { m["ProcessTags"] = nil }, "ProcessTags is nil"},
		{"nil Transactions", func(m map[string]any) { m["Stats"].([]any)[0].(map[string]any)["Transactions"] = nil }, "Transactions is nil"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := goodPayload()
			tc.mod(m)
			raw, err := msgpack.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			p, pts, err := DecodePayload(gz(t, raw))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if p.Service != "s" || len(pts) != 1 || pts[0].Hash != 9 || pts[0].Count() != 1 {
					t.Fatalf("decoded %+v %+v", p, pts)
				}
				if q, _ := pts[0].EdgeLatency.GetValueAtQuantile(0.5); q < 0.99 || q > 1.01 {
					t.Errorf("sketch {1.0} decodes to %v", q)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// FuzzDecodePayload: the fake Agent's decoder never panics, whatever the body; what it accepts
// it keeps as sent (Raw is the body inflated), and its points are the payload's, bucket by
// bucket, in order, each with its bucket's time and the sketches its bytes hold. (That the
// aggregator's encoder writes back what this decoder read is the aggregator's
// FuzzDecodedPayloadReencodes.)
func FuzzDecodePayload(f *testing.F) {
	raw, _ := msgpack.Marshal(goodPayload())
	f.Add(gz(f, raw))
	f.Add(raw)
	f.Add([]byte{})
	f.Add(gz(f, []byte{0x80}))
	f.Fuzz(func(t *testing.T, body []byte) {
		checkDecoded(t, body, nil)
		// Also the msgpack layer directly, so the fuzzer need not find valid gzip first.
		checkDecoded(t, gz(t, body), body)
	})
}

// checkDecoded decodes body (raw inflated, when known) and checks what it accepts.
func checkDecoded(t *testing.T, body, raw []byte) {
	p, pts, err := DecodePayload(body)
	if err != nil {
		return
	}
	if raw != nil && !bytes.Equal(p.Raw, raw) {
		t.Fatalf("Raw is %x, the body inflated %x", p.Raw, raw)
	}
	i := 0
	for _, b := range p.Stats {
		for _, rp := range b.Stats {
			if i >= len(pts) {
				t.Fatalf("%d points for a payload with more", len(pts))
			}
			pt := pts[i]
			i++
			if pt.Hash != rp.Hash || pt.ParentHash != rp.ParentHash || !slices.Equal(pt.EdgeTags, rp.EdgeTags) || pt.TimestampType != rp.TimestampType ||
				pt.Service != p.Service || pt.Env != p.Env || pt.Start.UnixNano() != int64(b.Start) || pt.Duration != time.Duration(b.Duration) {
				t.Fatalf("point %d is %+v, from %+v in bucket %d/%d", i-1, pt, rp, b.Start, b.Duration)
			}
			for _, s := range []struct {
				in  []byte
				got *ddsketch.DDSketch
			}{{rp.PathwayLatency, pt.PathwayLatency}, {rp.EdgeLatency, pt.EdgeLatency}, {rp.PayloadSize, pt.PayloadSize}} {
				want, err := DecodeSketch(s.in)
				if err != nil {
					t.Fatalf("point %d: a sketch accepted decodes alone with %v", i-1, err)
				}
				if math.Float64bits(s.got.GetCount()) != math.Float64bits(want.GetCount()) || math.Float64bits(s.got.GetSum()) != math.Float64bits(want.GetSum()) {
					t.Fatalf("point %d: a sketch of %v values (sum %v), its bytes hold %v (sum %v)", i-1, s.got.GetCount(), s.got.GetSum(), want.GetCount(), want.GetSum())
				}
			}
		}
	}
	if i != len(pts) {
		t.Fatalf("%d points for a payload with %d", len(pts), i)
	}
}

func TestCheckLengths(t *testing.T) {
	good, _ := msgpack.Marshal(goodPayload())
	for _, tc := range []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"payload", good, true},
		{"map32 of 4 billion", []byte{0xdf, 0xff, 0xff, 0xff, 0xff, 0x01}, false},
		{"str32 longer than the body", []byte{0xdb, 0x00, 0x10, 0x00, 0x00, 'a'}, false},
		{"deep nesting", bytes.Repeat([]byte{0x91}, 100000), false},
		{"truncated", good[:len(good)-1], false},
		{"trailing bytes", append(append([]byte{}, good...), 0xc0), false},
		{"invalid type", []byte{0xc1}, false},
	} {
		if err := checkLengths(tc.in); (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
