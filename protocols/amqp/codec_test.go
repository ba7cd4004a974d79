package amqp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/dsmproxy/dsmproxy/pathway"
)

var testCtx = pathway.Context{Hash: 0x1122334455667788, PathwayStart: time.UnixMilli(1700000000000), EdgeStart: time.UnixMilli(1700000000500)}

// contentPayload builds a Basic content-header payload with flags and the property bytes given.
func contentPayload(bodySize uint64, flags uint16, props ...[]byte) []byte {
	p := binary.BigEndian.AppendUint16(nil, classBasic)
	p = binary.BigEndian.AppendUint16(p, 0)
	p = binary.BigEndian.AppendUint64(p, bodySize)
	p = binary.BigEndian.AppendUint16(p, flags)
	for _, b := range props {
		p = append(p, b...)
	}
	return p
}

func sstr(s string) []byte { return append([]byte{byte(len(s))}, s...) }

func lstr(b []byte) []byte { return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...) }

// table builds a field table from raw entries.
func table(entries ...[]byte) []byte { return lstr(bytes.Join(entries, nil)) }

func entry(key string, typ byte, v []byte) []byte { return append(append(sstr(key), typ), v...) }

// everyType is a table with every field type RabbitMQ and the spec define.
func everyType() []byte {
	return table(
		entry("t", 't', []byte{1}), entry("b", 'b', []byte{0xff}), entry("B", 'B', []byte{7}),
		entry("s", 's', []byte{0, 1}), entry("u", 'u', []byte{0, 2}), entry("U", 'U', []byte{0, 3}),
		entry("I", 'I', []byte{0, 0, 0, 4}), entry("i", 'i', []byte{0, 0, 0, 5}), entry("f", 'f', []byte{0, 0, 0, 0}),
		entry("l", 'l', make([]byte, 8)), entry("L", 'L', make([]byte, 8)), entry("d", 'd', make([]byte, 8)),
		entry("T", 'T', make([]byte, 8)), entry("D", 'D', []byte{2, 0, 0, 0, 9}), entry("V", 'V', nil),
		entry("S", 'S', lstr([]byte("long string"))), entry("x", 'x', lstr([]byte{0xCE, 0})),
		entry("F", 'F', table(entry("in", 'A', lstr(append([]byte{'S'}, lstr([]byte("v"))...))))),
		entry("A", 'A', lstr(append([]byte{'I', 0, 0, 0, 1, 'F'}, table(entry("k", 'V', nil))...))),
	)
}

// unsplice undoes spliceHeader on a payload where no entry was replaced: it removes the appended
// entry (and the table when it was added) and restores lengths and flags.
func unsplice(t *testing.T, p []byte, hadTable bool) []byte {
	t.Helper()
	h, err := parseContentHeader(p)
	if err != nil || h.CtxEnd == 0 || h.CtxEnd != h.TableEnd {
		t.Fatalf("spliced payload: %+v, %v", h, err)
	}
	out := append([]byte(nil), p[:h.CtxAt]...)
	out = append(out, p[h.CtxEnd:]...)
	if !hadTable {
		out = append(append([]byte(nil), out[:h.TableAt]...), out[h.TableAt+4:]...)
		binary.BigEndian.PutUint16(out[12:], binary.BigEndian.Uint16(out[12:])&^flagHeaders)
		return out
	}
	binary.BigEndian.PutUint32(out[h.TableAt:], uint32(h.CtxAt-h.TableAt-4))
	return out
}

func TestSpliceKeepsEveryOtherByte(t *testing.T) {
	ts := make([]byte, 8)
	cases := map[string][]byte{
		"no properties":         contentPayload(5, 0),
		"headers only, empty":   contentPayload(0, flagHeaders, table()),
		"type and encoding":     contentPayload(5, flagContentType|flagContentEncoding|0x1000, sstr("a/b"), sstr(""), []byte{2}),
		"all fourteen":          contentPayload(1<<40, 0xfffc, sstr("ct"), sstr("ce"), everyType(), []byte{2}, []byte{9}, sstr("corr"), sstr("r"), sstr("6"), sstr("id"), ts, sstr("ty"), sstr("u"), sstr("app"), sstr("cl")),
		"empty content type":    contentPayload(3, flagContentType|flagHeaders, sstr(""), table(entry("k", 'S', lstr([]byte("v"))))),
		"continuation flag":     contentPayload(3, flagHeaders|1, []byte{0, 0}, table(entry("k", 't', []byte{0}))),
		"no table, after props": contentPayload(3, flagContentType|0x0010, sstr("x"), sstr("user")),
	}
	val := testCtx.AppendBase64(nil)
	for name, p := range cases {
		t.Run(name, func(t *testing.T) {
			h, err := parseContentHeader(p)
			if err != nil {
				t.Fatal(err)
			}
			out := spliceHeader(nil, p, &h, val)
			if len(out) != splicedLen(p, &h, len(val)) {
				t.Errorf("spliced %d bytes, splicedLen says %d", len(out), splicedLen(p, &h, len(val)))
			}
			h2, err := parseContentHeader(out)
			if err != nil {
				t.Fatal(err)
			}
			if string(h2.Ctx) != string(val) || h2.BodySize != h.BodySize {
				t.Errorf("after splice: ctx %q body %d", h2.Ctx, h2.BodySize)
			}
			if back := unsplice(t, out, h.HasTable); !bytes.Equal(back, p) {
				t.Errorf("bytes besides the header changed:\n got %x\nwant %x", back, p)
			}
		})
	}
}

func TestSpliceReplacesExisting(t *testing.T) {
	p := contentPayload(1, flagHeaders, table(entry("a", 'S', lstr([]byte("1"))), entry(pathway.HeaderKey, 'S', lstr([]byte("old"))), entry("z", 't', []byte{1})))
	h, err := parseContentHeader(p)
	if err != nil || string(h.Ctx) != "old" {
		t.Fatalf("%+v %v", h, err)
	}
	out := spliceHeader(nil, p, &h, []byte("new"))
	want := contentPayload(1, flagHeaders, table(entry("a", 'S', lstr([]byte("1"))), entry("z", 't', []byte{1}), entry(pathway.HeaderKey, 'S', lstr([]byte("new")))))
	if !bytes.Equal(out, want) {
		t.Errorf("got  %x\nwant %x", out, want)
	}
}

// TestStripCtxKeepsEveryOtherByte: stripCtx takes the pathway entry out of a delivered header
// wherever it sits in the table, and leaves the rest, later properties included, as it was.
func TestStripCtxKeepsEveryOtherByte(t *testing.T) {
	ctx := entry(pathway.HeaderKey, 'S', lstr(testCtx.AppendBase64(nil)))
	a, z := entry("a", 'S', lstr([]byte("1"))), entry("z", 'F', table(entry("in", 't', []byte{1})))
	cases := []struct {
		name       string
		with, want []byte
	}{
		{"entry alone", contentPayload(1, flagHeaders, table(ctx)), contentPayload(1, flagHeaders, table())},
		{"entry last", contentPayload(1, flagHeaders, table(a, z, ctx)), contentPayload(1, flagHeaders, table(a, z))},
		{"entry first", contentPayload(1, flagHeaders, table(ctx, a, z)), contentPayload(1, flagHeaders, table(a, z))},
		{"entry between, props after", contentPayload(9, flagContentType|flagHeaders|0x1000, sstr("ct"), table(a, ctx, z), []byte{2}),
			contentPayload(9, flagContentType|flagHeaders|0x1000, sstr("ct"), table(a, z), []byte{2})},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := parseContentHeader(c.with)
			if err != nil || h.CtxEnd == 0 {
				t.Fatalf("%+v %v", h, err)
			}
			if got := stripCtx(nil, c.with, &h); !bytes.Equal(got, c.want) {
				t.Errorf("got  %x\nwant %x", got, c.want)
			}
		})
	}
}

func TestTableSkipperRejects(t *testing.T) {
	for name, b := range map[string][]byte{
		"length past end":   {0, 0, 0, 9, 1, 'k'},
		"unknown type":      table(entry("k", 'Z', nil)),
		"short value":       table(entry("k", 'l', []byte{1, 2})),
		"nested too long":   table(entry("k", 'F', []byte{0, 0, 0, 200})),
		"array bad element": table(entry("k", 'A', lstr([]byte{'Q'}))),
	} {
		if _, err := skipTable(b, 0); err == nil {
			t.Errorf("%s: skipped without error", name)
		}
	}
	if n, err := skipTable(everyType(), 0); err != nil || n != len(everyType()) {
		t.Errorf("every type: %d, %v", n, err)
	}
}

func TestSplitFrame(t *testing.T) {
	hb := []byte{8, 0, 0, 0, 0, 0, 0, 0xCE}
	stream := append(appendFrame(nil, frameMethod, 3, []byte{0, 60, 0, 40}), hb...)
	f, rest, err := splitFrame(stream)
	if err != nil || f.Type != frameMethod || f.Channel != 3 || len(f.Payload) != 4 {
		t.Fatalf("%+v %v", f, err)
	}
	if f, rest, err = splitFrame(rest); err != nil || f.Type != frameHeartbeat || len(rest) != 0 {
		t.Fatalf("heartbeat: %+v %v", f, err)
	}
	if _, _, err := splitFrame(hb[:7]); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("partial frame: %v", err)
	}
	bad := append([]byte(nil), hb...)
	bad[7] = 0
	if _, _, err := splitFrame(bad); !errors.Is(err, errFrameEnd) {
		t.Errorf("bad end octet: %v", err)
	}
	fr := &frameReader{r: newConnReader(bytes.NewReader(bad), nil), max: 100}
	_, _, size, _ := fr.header()
	if _, err := fr.read(size); !errors.Is(err, errFrameEnd) {
		t.Errorf("reader, bad end octet: %v", err)
	}
}

func TestSaslUser(t *testing.T) {
	if u := saslUser([]byte("PLAIN"), []byte("\x00alice\x00secret")); u != "alice" {
		t.Errorf("PLAIN: %q", u)
	}
	if u := saslUser([]byte("AMQPLAIN"), table(entry("LOGIN", 'S', lstr([]byte("bob"))))[4:]); u != "bob" {
		t.Errorf("AMQPLAIN: %q", u)
	}
}
