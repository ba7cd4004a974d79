package pathway

import (
	"bytes"
	"math"
	"testing"

	"github.com/DataDog/sketches-go/ddsketch/encoding"
)

// TestHashableKeys: a tag takes part in the node hash when its key (the text before the first
// colon) is in dd-trace-go's set, whatever follows the colon (dsm-protocol.md 1.3); other keys
// are reported but not hashed, and so is a tag with no colon at all, whatever its text
// (dd-trace-go internal/datastreams/pathway.go isWellFormedEdgeTag: strings.Cut must find one).
func TestHashableKeys(t *testing.T) {
	for _, c := range []struct {
		tag  string
		want bool
	}{
		{"event_type:orders", true}, {"exchange:billing", true}, {"exchange:a:b", true},
		{"group:g1", true}, {"kafka_cluster_id:abc", true}, {"topic:orders", true},
		{"topic:arn:aws:sns:us-east-1:123456789012:t", true}, {"type:kafka", true}, {"type::dog", true},
		{"type:", true}, {"direction:in", true}, {"segment_name:s", true},
		{"partition:0", false}, {"has_routing_key:true", false}, {"manual_checkpoint:true", false},
		{"topics:orders", false}, {"Topic:orders", false}, {":topic", false}, {"", false},
		{"type", false}, {"topic", false}, {"direction", false},
	} {
		if got := Hashable(c.tag); got != c.want {
			t.Errorf("Hashable(%q) = %v, want %v", c.tag, got, c.want)
		}
		// The hash agrees: a hashable tag changes the node hash, another one does not.
		with, without := HashNode("svc", "env", []string{c.tag}), HashNode("svc", "env", nil)
		if (with != without) != c.want {
			t.Errorf("HashNode with %q changed: %v, want %v", c.tag, with != without, c.want)
		}
	}
}

// TestVarintMatchesSketchesGo: the context's varints are sketches-go's EncodeVarint64 bytes, up to
// the 9-byte form whose last byte carries 8 bits (dsm-protocol.md 2.1), and each side decodes the
// other's.
func TestVarintMatchesSketchesGo(t *testing.T) {
	for _, v := range []int64{0, 1, -1, 63, -64, 64, 1 << 20, 1700000000000, -1700000000000,
		1<<55 - 1, 1 << 55, -(1 << 55), 1<<62 + 12345, math.MaxInt64, math.MinInt64, math.MinInt64 + 1} {
		var want []byte
		encoding.EncodeVarint64(&want, v)
		got := appendVarint(nil, v)
		if !bytes.Equal(got, want) {
			t.Errorf("appendVarint(%d) = % x, sketches-go writes % x", v, got, want)
		}
		if len(got) > maxVarLen64 {
			t.Errorf("appendVarint(%d) is %d bytes, more than %d", v, len(got), maxVarLen64)
		}
		back, n, err := readVarint(want)
		if err != nil || n != len(want) || back != v {
			t.Errorf("readVarint(% x) = %d, %d, %v; want %d, %d", want, back, n, err, v, len(want))
		}
		theirs := bytes.Clone(got)
		if dv, err := encoding.DecodeVarint64(&theirs); err != nil || dv != v {
			t.Errorf("sketches-go decodes appendVarint(%d) as %d, %v", v, dv, err)
		}
	}
}
