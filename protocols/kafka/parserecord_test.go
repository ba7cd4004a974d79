package kafka

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kbin"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// parseRecordReader is parseRecord as it was written with kbin.Reader: the reference that
// FuzzParseRecord holds the faster parser to.
func parseRecordReader(body []byte) (recordFields, error) {
	var f recordFields
	r := kbin.Reader{Src: body}
	r.Int8()
	r.Varlong()
	f.offsetDelta = r.Varint()
	if k := r.Varint(); k > 0 {
		r.Span(int(k))
		f.payload += int64(k)
	}
	if v := r.Varint(); v > 0 {
		r.Span(int(v))
		f.payload += int64(v)
	}
	f.countPos = len(body) - len(r.Src)
	n := r.Varint()
	f.countEnd = len(body) - len(r.Src)
	if n < 0 || int(n) > len(r.Src) {
		return f, errBatch
	}
	f.headerCount = int(n)
	for i := 0; i < int(n) && r.Ok(); i++ {
		kl := r.Varint()
		if kl < 0 {
			return f, errBatch
		}
		key := r.Span(int(kl))
		vl := r.Varint()
		var val []byte
		if vl > 0 {
			val = r.Span(int(vl))
		}
		f.payload += int64(len(key) + len(val))
		if string(key) == pathway.HeaderKey {
			f.context, f.hasContext = val, true
		}
	}
	if !r.Ok() || len(r.Src) != 0 {
		return f, errBatch
	}
	return f, nil
}

// FuzzParseRecord: parseRecord and the kbin.Reader reference agree on every input, in their
// error and in every field.
func FuzzParseRecord(f *testing.F) {
	rec := func(key, value []byte, headers ...[]byte) []byte {
		b := []byte{0}
		b = kbin.AppendVarlong(b, 1234567)
		b = kbin.AppendVarint(b, 3)
		b = kbin.AppendVarintBytes(b, key)
		b = kbin.AppendVarintBytes(b, value)
		b = kbin.AppendVarint(b, int32(len(headers)/2))
		for i := 0; i+1 < len(headers); i += 2 {
			b = kbin.AppendVarintBytes(b, headers[i])
			b = kbin.AppendVarintBytes(b, headers[i+1])
		}
		return b
	}
	f.Add(rec(nil, []byte("v")))
	f.Add(rec([]byte("k"), make([]byte, 300), []byte("h"), nil, []byte("dd-pathway-ctx-base64"), []byte("abc")))
	f.Add(rec(make([]byte, 70), nil, []byte("x"), []byte("y")))
	f.Add([]byte{0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, body []byte) {
		got, gerr := parseRecord(body)
		want, werr := parseRecordReader(body)
		if (gerr == nil) != (werr == nil) {
			t.Fatalf("error %v, reference %v", gerr, werr)
		}
		if gerr != nil {
			return
		}
		if got.offsetDelta != want.offsetDelta || got.countPos != want.countPos || got.countEnd != want.countEnd ||
			got.headerCount != want.headerCount || got.payload != want.payload || got.hasContext != want.hasContext ||
			string(got.context) != string(want.context) {
			t.Fatalf("got %+v, reference %+v", got, want)
		}
	})
}

func BenchmarkParseRecord(b *testing.B) {
	body := []byte{0}
	body = kbin.AppendVarlong(body, 12)
	body = kbin.AppendVarint(body, 3)
	body = kbin.AppendVarintBytes(body, []byte("17"))
	body = kbin.AppendVarintBytes(body, make([]byte, 1024))
	body = kbin.AppendVarint(body, 1)
	body = kbin.AppendVarintString(body, "dd-pathway-ctx-base64")
	body = kbin.AppendVarintBytes(body, []byte("ZGQtcGF0aHdheS1jb250ZXh0"))
	for _, impl := range []struct {
		name  string
		parse func([]byte) (recordFields, error)
	}{{"varintAt", parseRecord}, {"kbin.Reader", parseRecordReader}} {
		b.Run(impl.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := impl.parse(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestVarintAtAsKbin: varintAt reads what kbin.Varint reads, at every offset, for every one- and
// two-byte start (the cases it decodes itself), then followed by a byte that ends the varint or
// one that continues it, and cut short.
func TestVarintAtAsKbin(t *testing.T) {
	for v := range 1 << 16 {
		b0, b1 := byte(v), byte(v>>8)
		for _, tail := range [][]byte{nil, {0x01}, {0x81}, {0x81, 0x02}, {0xff, 0xff, 0xff, 0x0f}, {0xff, 0xff, 0xff, 0x7f}} {
			b := append([]byte{0x05, b0, b1}, tail...)
			for end := 1; end <= len(b); end++ {
				got, gi := varintAt(b[:end], 1)
				want, n := kbin.Varint(b[1:end])
				wi := 1 + n
				if n <= 0 {
					want, wi = 0, -1
				}
				if got != want || gi != wi {
					t.Fatalf("% x from 1: varintAt %d next %d, kbin %d next %d", b[:end], got, gi, want, wi)
				}
			}
		}
	}
}
