package kafka

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/pierrec/lz4/v4"
	"github.com/twmb/franz-go/pkg/kbin"
)

// jsonRecords is n records of about size bytes each, shaped like JSON events (the same keys,
// random values), one header each, as record-batch bytes (length-prefixed record bodies).
func jsonRecords(seed uint64, n, size int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	var raw []byte
	for i := 0; i < n; i++ {
		v := fmt.Appendf(nil, `{"event_id":"%016x","customer":%d,"items":[`, r.Uint64(), r.IntN(1e6))
		for len(v) < size {
			v = fmt.Appendf(v, `{"sku":"sku-%05d","qty":%d,"note":"%c%c%c"},`, r.IntN(1e5), r.IntN(9), 'a'+r.IntN(26), 'a'+r.IntN(26), 'a'+r.IntN(26))
		}
		var body []byte
		body = append(body, 0)
		body = kbin.AppendVarlong(body, int64(i))
		body = kbin.AppendVarint(body, int32(i))
		body = kbin.AppendVarintBytes(body, fmt.Appendf(nil, "key-%d", i))
		body = kbin.AppendVarintBytes(body, v[:size])
		body = kbin.AppendVarint(body, 1)
		body = kbin.AppendVarintString(body, "h")
		body = kbin.AppendVarintBytes(body, []byte("x"))
		raw = kbin.AppendVarint(raw, int32(len(body)))
		raw = append(raw, body...)
	}
	return raw
}

// transcodeCheck splices a header into every record of plain for which pick says so, transcodes
// frame (plain, compressed) and checks the result decodes, with pierrec's reader, to the spliced
// records. It returns the transcoded frame.
func transcodeCheck(t testing.TB, frame, plain []byte, count int, pick func(i int) []byte) []byte {
	t.Helper()
	var m spliceMap
	i := 0
	spliced, _, err := spliceHeaders(nil, plain, count, batchMeta{}, func(batchMeta, *recordMeta) []byte { i++; return pick(i - 1) }, &m)
	if err != nil {
		t.Fatal(err)
	}
	var tc lz4Transcoder
	out, ok := tc.transcode([]byte("prefix"), frame, plain, spliced, &m)
	if !ok {
		t.Fatalf("transcode declined a %d-byte frame", len(frame))
	}
	if string(out[:6]) != "prefix" {
		t.Fatal("dst prefix overwritten")
	}
	out = out[6:]
	got, err := io.ReadAll(lz4.NewReader(bytes.NewReader(out)))
	if err != nil || !bytes.Equal(got, spliced) {
		t.Fatalf("transcoded frame decodes to %d bytes (%v), want the %d spliced bytes", len(got), err, len(spliced))
	}
	if dec, ok := lz4Decode(nil, out); !ok || !bytes.Equal(dec, spliced) {
		t.Fatalf("the proxy's own decoder reads the transcoded frame: ok=%v", ok)
	}
	return out
}

// TestLz4Transcode: for every usual frame shape, record count and header choice, the transcoded
// frame decodes to the spliced records, and compresses about as well as compressing them afresh.
func TestLz4Transcode(t *testing.T) {
	ctx := []byte("ZGQtcGF0aHdheS1jb250ZXh0LWJhc2U2NC12YWx1ZQ")
	other := []byte("b3RoZXItY29udGV4dC12YWx1ZS1zYW1lLWxlbmd0aA")
	picks := map[string]func(int) []byte{
		"every record":    func(int) []byte { return ctx },
		"every other":     func(i int) []byte { return map[bool][]byte{true: ctx}[i%2 == 0] },
		"two values":      func(i int) []byte { return map[bool][]byte{true: ctx, false: other}[i%3 == 0] },
		"first only":      func(i int) []byte { return map[bool][]byte{true: ctx}[i == 0] },
		"long header":     func(int) []byte { return bytes.Repeat([]byte("z"), 300) },
		"varint grows":    func(int) []byte { return bytes.Repeat([]byte("y"), 120) },
		"none but second": func(i int) []byte { return map[bool][]byte{true: ctx}[i == 1] },
	}
	for _, shape := range []struct{ n, size int }{{1, 100}, {100, 1024}, {300, 1024}, {2000, 60}, {5, 20000}} {
		plain := jsonRecords(uint64(shape.n), shape.n, shape.size)
		for fname, frame := range lz4Frames(t, plain) {
			for pname, pick := range picks {
				t.Run(fmt.Sprintf("%dx%d/%s/%s", shape.n, shape.size, fname, pname), func(t *testing.T) {
					out := transcodeCheck(t, frame, plain, shape.n, pick)
					if pname == "every record" && shape.n == 100 && fname == "kgo" {
						var m spliceMap
						spliced, _, _ := spliceHeaders(nil, plain, shape.n, batchMeta{}, func(batchMeta, *recordMeta) []byte { return ctx }, &m)
						var lc lz4.Compressor
						fresh := lz4Encode(nil, spliced, &lc)
						t.Logf("input %d B, transcoded %d B, compressed afresh %d B", len(frame), len(out), len(fresh))
						if len(out) > len(fresh)*11/10 {
							t.Errorf("transcoded %d B, more than 10%% over compressing afresh (%d B)", len(out), len(fresh))
						}
					}
				})
			}
		}
	}
}

// TestLz4TranscodeStoredBlocks: records of random bytes do not compress, so the input's blocks
// are stored; the transcoded frame still decodes to the spliced records.
func TestLz4TranscodeStoredBlocks(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var plain []byte
	for i := 0; i < 200; i++ {
		v := make([]byte, 1024)
		for j := range v {
			v[j] = byte(r.Uint32())
		}
		var body []byte
		body = append(body, 0)
		body = kbin.AppendVarlong(body, int64(i))
		body = kbin.AppendVarint(body, int32(i))
		body = kbin.AppendVarintBytes(body, nil)
		body = kbin.AppendVarintBytes(body, v)
		body = kbin.AppendVarint(body, 0)
		plain = kbin.AppendVarint(plain, int32(len(body)))
		plain = append(plain, body...)
	}
	for name, frame := range lz4Frames(t, plain) {
		t.Run(name, func(t *testing.T) {
			transcodeCheck(t, frame, plain, 200, func(int) []byte { return []byte("ctx-value-of-some-length") })
		})
	}
}

// TestLz4TranscodeDeclines: a frame the walker cannot follow, or one that does not decode to the
// records it is given, is declined (the caller compresses afresh), never mistranscoded.
func TestLz4TranscodeDeclines(t *testing.T) {
	plain := jsonRecords(1, 50, 500)
	var lc lz4.Compressor
	good := lz4Encode(nil, plain, &lc)
	var m spliceMap
	spliced, _, err := spliceHeaders(nil, plain, 50, batchMeta{}, func(batchMeta, *recordMeta) []byte { return []byte("ctx-value") }, &m)
	if err != nil {
		t.Fatal(err)
	}
	for name, frame := range map[string][]byte{
		"empty":         nil,
		"linked blocks": func() []byte { b := append([]byte(nil), good...); b[4] &^= 1 << 5; return b }(),
		"no end mark":   good[:len(good)-4],
		"cut":           good[:len(good)/2],
		"other content": lz4Encode(nil, plain[:len(plain)-10], &lc),
	} {
		var tc lz4Transcoder
		if _, ok := tc.transcode(nil, frame, plain, spliced, &m); ok {
			t.Errorf("%s: transcoded", name)
		}
	}
}

// FuzzLz4Transcode: records built from the fuzzer's bytes, compressed by pierrec, get headers
// spliced in where the fuzzer says; the transcoded frame always decodes to the spliced records.
func FuzzLz4Transcode(f *testing.F) {
	f.Add([]byte(`{"a":1,"b":"xyzxyzxyz"}`), uint8(3), uint16(0xaaaa), uint8(0))
	f.Add(bytes.Repeat([]byte("abcd"), 100), uint8(20), uint16(0xffff), uint8(1))
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, uint8(200), uint16(0x1234), uint8(2))
	f.Fuzz(func(t *testing.T, value []byte, n uint8, mask uint16, shape uint8) {
		if n == 0 || len(value) > 4096 {
			return
		}
		var raw []byte
		for i := 0; i < int(n); i++ {
			var body []byte
			body = append(body, 0)
			body = kbin.AppendVarlong(body, int64(i))
			body = kbin.AppendVarint(body, int32(i))
			body = kbin.AppendVarintBytes(body, nil)
			body = kbin.AppendVarintBytes(body, value[:(i*7)%(len(value)+1)])
			body = kbin.AppendVarint(body, 0)
			raw = kbin.AppendVarint(raw, int32(len(body)))
			raw = append(raw, body...)
		}
		opts := [][]lz4.Option{
			{lz4.ChecksumOption(false), lz4.BlockSizeOption(lz4.Block64Kb)},
			{lz4.BlockChecksumOption(true)},
			{lz4.BlockSizeOption(lz4.Block256Kb), lz4.SizeOption(uint64(len(raw)))},
		}[int(shape)%3]
		var b bytes.Buffer
		w := lz4.NewWriter(&b)
		if err := w.Apply(opts...); err != nil {
			t.Fatal(err)
		}
		w.Write(raw)
		w.Close()
		vals := [][]byte{nil, []byte("ctx-one-value"), value[:len(value)/2]}
		transcodeCheck(t, b.Bytes(), raw, int(n), func(i int) []byte { return vals[(int(mask)>>(i%8*2))&3%3] })
	})
}

// BenchmarkLz4Rewrite: splicing a header into a 100-record lz4 batch of JSON-like 1 KiB records
// (kgo's framing) and re-encoding it: by transcoding, against compressing the spliced records afresh.
func BenchmarkLz4Rewrite(b *testing.B) {
	plain := jsonRecords(1, 100, 1024)
	frame := lz4Frames(b, plain)["kgo"]
	ctx := []byte("ZGQtcGF0aHdheS1jb250ZXh0LWJhc2U2NC12YWx1ZQ")
	pick := func(batchMeta, *recordMeta) []byte { return ctx }
	var m spliceMap
	var tc lz4Transcoder
	var lc lz4.Compressor
	var spliced, out []byte
	for _, mode := range []string{"transcode", "compress"} {
		b.Run(mode, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(plain)))
			for b.Loop() {
				m.reset()
				spliced, _, _ = spliceHeaders(spliced[:0], plain, 100, batchMeta{}, pick, &m)
				ok := false
				if mode == "transcode" {
					out, ok = tc.transcode(out[:0], frame, plain, spliced, &m)
				}
				if !ok {
					out = lz4Encode(out[:0], spliced, &lc)
				}
			}
		})
	}
}
