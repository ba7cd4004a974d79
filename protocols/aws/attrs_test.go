package aws

import (
	"encoding/json"
	"math/rand/v2"
	"testing"

	"github.com/dsmproxy/dsmproxy/pathway"
)

func sp(s string) *string { return &s }

// Published check vectors for MD5OfMessageAttributes (AWS's algorithm, as the npm
// aws-md5-of-message-attributes package and the Java SDK compute it).
func TestAttributesMD5Vectors(t *testing.T) {
	cases := []struct {
		attrs []attr
		want  string
	}{
		{[]attr{{Name: "attribName1", DataType: "String", String: sp("attribValue 1")}}, "19e27d4e946b072f3f58da80d94fd778"},
		{[]attr{{Name: "binaryAttribute", DataType: "Binary", Binary: []byte("Hello binary world!")}}, "31a92b15d92f8db860eda32aceb656c3"},
		{nil, ""},
	}
	for _, c := range cases {
		if got := attributesMD5(c.attrs); got != c.want {
			t.Errorf("attributesMD5(%v) = %q, want %q", c.attrs, got, c.want)
		}
	}
	// order of input does not matter: names are sorted
	a := []attr{{Name: "b", DataType: "String", String: sp("2")}, {Name: "a", DataType: "Number", String: sp("1")}}
	b := []attr{a[1], a[0]}
	if attributesMD5(a) != attributesMD5(b) {
		t.Error("MD5 depends on attribute order")
	}
}

func TestWantsAttr(t *testing.T) {
	cases := []struct {
		names []string
		want  bool
	}{
		{nil, false},
		{[]string{"tenant"}, false},
		{[]string{"All"}, true},
		{[]string{".*"}, true},
		{[]string{"_datadog"}, true},
		{[]string{"_datadog.*"}, false},
		{[]string{"_data.*"}, false},
	}
	for _, c := range cases {
		if got := wantsAttr(c.names, ddAttr); got != c.want {
			t.Errorf("wantsAttr(%v) = %v, want %v", c.names, got, c.want)
		}
	}
	if !wantsAttr([]string{"bar.*"}, "bar.baz") {
		t.Error("prefix bar.* does not match bar.baz")
	}
}

func TestCarrierMergesExistingKeys(t *testing.T) {
	c := pathway.Context{Hash: 42}
	got := carrierJSON([]byte(`{"x-datadog-trace-id":"1","dd-pathway-ctx-base64":"old"}`), c)
	if want := `{"dd-pathway-ctx-base64":"` + c.String() + `","x-datadog-trace-id":"1"}`; string(got) != want {
		t.Errorf("merged carrier %s, want %s", got, want)
	}
	if back := contextFromCarrier(got); back.Hash != 42 {
		t.Errorf("round trip hash %d", back.Hash)
	}
}

// TestUnescapeSimpleMatchesJSON: the fast path decodes exactly as encoding/json, and declines
// what it does not handle; unescapedLenSimple agrees with it on every input.
func TestUnescapeSimpleMatchesJSON(t *testing.T) {
	inputs := []string{`""`, `"a"`, `"{\"dd-pathway-ctx-base64\":\"AbC+/=\"}"`, `"\\\/\b\f\n\r\t"`, `"tail\\"`,
		`"\u0041"`, `"é"`, "\"\x01\"", `"\x"`, `"a\"`, `"\"`, `"a"b"`}
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("ab\\\"/bfnrtu0{}: \x7f\x1f")
	for i := 0; i < 20000; i++ {
		b := make([]byte, r.IntN(12))
		for j := range b {
			b[j] = alphabet[r.IntN(len(alphabet))]
		}
		inputs = append(inputs, `"`+string(b)+`"`)
	}
	for _, in := range inputs {
		got, ok := unescapeSimple([]byte(in))
		if n, lok := unescapedLenSimple([]byte(in)); lok != ok || n != len(got) {
			t.Fatalf("%q: unescapedLenSimple %d, %v; unescapeSimple %q, %v", in, n, lok, got, ok)
		}
		if !ok {
			continue
		}
		var want string
		if err := json.Unmarshal([]byte(in), &want); err != nil || got != want {
			t.Fatalf("%q: fast path %q, encoding/json %q (%v)", in, got, want, err)
		}
	}
	if _, ok := unescapeSimple([]byte(`"{\"k\":\"v\"}"`)); !ok {
		t.Fatal("a typical escaped carrier is not on the fast path")
	}
}
