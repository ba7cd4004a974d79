package aws

import (
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

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

// TestCarrierKeepsTheTracersBytes: the pathway context goes into a tracer's `_datadog` without
// re-encoding the rest of it: member order, spacing and escapes stay as the tracer wrote them.
func TestCarrierKeepsTheTracersBytes(t *testing.T) {
	c := pathway.Context{Hash: 42}
	v := `"` + c.String() + `"`
	cases := []struct{ name, existing, want string }{
		{"none", ``, `{"dd-pathway-ctx-base64":` + v + `}`},
		{"not a carrier", `"text"`, `{"dd-pathway-ctx-base64":` + v + `}`},
		{"replaced in place", `{"x-datadog-trace-id":"1","dd-pathway-ctx-base64":"old","z":2}`,
			`{"x-datadog-trace-id":"1","dd-pathway-ctx-base64":` + v + `,"z":2}`},
		{"added last, order kept", `{"x-datadog-trace-id":"1","a":"b"}`,
			`{"x-datadog-trace-id":"1","a":"b","dd-pathway-ctx-base64":` + v + `}`},
		{"spacing and escapes kept", "{ \"t\" : \"<a&b>\\u00e9\" }",
			"{ \"t\" : \"<a&b>\\u00e9\" ,\"dd-pathway-ctx-base64\":" + v + "}"},
		{"key in another case replaced", `{"Dd-Pathway-Ctx-Base64":"old","x-datadog-trace-id":"1"}`,
			`{"dd-pathway-ctx-base64":` + v + `,"x-datadog-trace-id":"1"}`},
		{"spacing around the replaced member kept", `{ "a":1 , "dd-pathway-ctx-base64" : "old" }`,
			`{ "a":1 , "dd-pathway-ctx-base64":` + v + ` }`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := carrierJSON([]byte(tc.existing), c)
			if string(got) != tc.want {
				t.Errorf("carrier %s, want %s", got, tc.want)
			}
			if !json.Valid(got) {
				t.Errorf("carrier %s is not JSON", got)
			}
			if back := contextFromCarrier(got); back.Hash != 42 {
				t.Errorf("round trip hash %d", back.Hash)
			}
		})
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

// TestSNSEnvelopeContextWhateverElse: the context in an SNS envelope's MessageAttributes is read
// whatever the envelope's other members hold, as the tracers' JSON readers find it: a member
// of another type than SNS writes (or a key SNS's in another case) does not hide it.
func TestSNSEnvelopeContextWhateverElse(t *testing.T) {
	c := pathway.Context{Hash: 7, PathwayStart: time.UnixMilli(1_700_000_000_000), EdgeStart: time.UnixMilli(1_700_000_000_500)}
	dd := `"_datadog":{"Type":"String","Value":` + strconv.Quote(string(carrierJSON(nil, c))) + `}`
	for _, env := range []string{
		`{"Type":"Notification","MessageAttributes":{` + dd + `}}`,
		`{"TYpe":{},"MessageAttributes":{` + dd + `}}`,
		`{"Type":1,"MessageAttributes":{` + dd + `}}`,
		`{"MessageAttributes":{"n":{"Type":"Number","Value":5},` + dd + `}}`,
		`{"MessageAttributes":{"n":[1],` + dd + `}}`,
		`{"messageattributes":7,"MessageAttributes":{` + dd + `}}`,
	} {
		if got := contextFromSNSEnvelope(env); got.Hash != c.Hash {
			t.Errorf("%s: read the context %x, want %x", env, got.Hash, c.Hash)
		}
	}
}
