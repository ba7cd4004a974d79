package amqp

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"testing"
)

// seedFrames are the golden client streams (without the protocol header) and broker streams,
// for the fuzz corpora.
func seedFrames(f *testing.F) [][]byte {
	var seeds [][]byte
	for _, g := range goldenFiles(f) {
		seeds = append(seeds, g.stream)
	}
	paths, _ := filepath.Glob(filepath.Join(goldenDir, "*.session"))
	for _, p := range paths {
		seeds = append(seeds, readTimeline(f, p).side(true))
	}
	return seeds
}

// FuzzSplitFrame: the byte splitter and the streaming reader agree on every input, and neither
// panics or reads past what a frame announces.
func FuzzSplitFrame(f *testing.F) {
	for _, s := range seedFrames(f) {
		f.Add(s)
	}
	f.Add([]byte{8, 0, 0, 0, 0, 0, 0, 0xCE})
	f.Add([]byte{3, 0, 1, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := &frameReader{r: newConnReader(shortReads{bytes.NewReader(b)}, nil), max: 1 << 16}
		rest := b
		for {
			sf, next, serr := splitFrame(rest)
			typ, ch, size, herr := fr.header()
			if herr != nil {
				if serr == nil {
					t.Fatalf("reader stopped (%v) where the splitter found %+v", herr, sf)
				}
				return
			}
			if int64(size) > int64(fr.max) {
				return
			}
			rf, rerr := fr.read(size)
			if (serr == nil) != (rerr == nil) {
				if errors.Is(serr, io.ErrUnexpectedEOF) && errors.Is(rerr, io.ErrUnexpectedEOF) {
					return
				}
				t.Fatalf("splitter %v, reader %v", serr, rerr)
			}
			if serr != nil {
				return
			}
			if rf.Type != typ || rf.Channel != ch || sf.Type != typ || !bytes.Equal(rf.Raw, sf.Raw) || len(sf.Payload) != int(size) {
				t.Fatalf("splitter %+v, reader %+v", sf, rf)
			}
			rest = next
		}
	})
}

// FuzzSkipTable: the skipper never panics, and a table it accepts is exactly the concatenation of
// the entries its walk reports.
func FuzzSkipTable(f *testing.F) {
	f.Add(everyType())
	f.Add(table(entry("k", 'F', table(entry("k", 'A', lstr([]byte{'V', 'V'}))))))
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := skipTable(b, 0)
		if err != nil {
			return
		}
		var joined []byte
		walkTable(b[4:n], 0, func(k []byte, typ byte, v []byte, start, end int) bool {
			e := append(append(sstr(string(k)), typ), v...)
			if !bytes.Equal(e, b[4+start:4+end]) {
				t.Fatalf("entry %q: %x is not %x", k, e, b[4+start:4+end])
			}
			joined = append(joined, e...)
			return true
		})
		if !bytes.Equal(joined, b[4:n]) {
			t.Fatalf("entries %x do not make up the table %x", joined, b[4:n])
		}
	})
}

// FuzzSpliceHeader: any content header the parser accepts splices into one that parses, carries
// the value, keeps the body size, and (without an earlier entry) differs only by the added entry.
func FuzzSpliceHeader(f *testing.F) {
	for _, s := range seedFrames(f) {
		for rest := s; ; {
			fr, next, err := splitFrame(rest)
			if err != nil {
				break
			}
			if fr.Type == frameHeader {
				f.Add(fr.Payload)
			}
			rest = next
		}
	}
	f.Add(contentPayload(5, 0xfffc, sstr("ct"), sstr("ce"), everyType()))
	f.Add(contentPayload(5, flagHeaders|1, []byte{0x80, 0}, table()))
	val := testCtx.AppendBase64(nil)
	f.Fuzz(func(t *testing.T, p []byte) {
		h, err := parseContentHeader(p)
		if err != nil || h.CtxTwice {
			return
		}
		out := spliceHeader(nil, p, &h, val)
		if len(out) != splicedLen(p, &h, len(val)) {
			t.Fatalf("spliced %d bytes, splicedLen %d", len(out), splicedLen(p, &h, len(val)))
		}
		h2, err := parseContentHeader(out)
		if err != nil {
			t.Fatalf("spliced header does not parse: %v\n in %x\nout %x", err, p, out)
		}
		if !bytes.Equal(h2.Ctx, val) || h2.BodySize != h.BodySize {
			t.Fatalf("spliced: ctx %q body %d", h2.Ctx, h2.BodySize)
		}
		if h.CtxEnd == 0 {
			if back := unsplice(t, out, h.HasTable); !bytes.Equal(back, p) {
				t.Fatalf("other bytes changed:\n in %x\nout %x", p, back)
			}
		}
	})
}

// shortReads returns at most 16 bytes a read, so frames span many reads (and body frames are
// streamed in many chunks) as on a slow socket.
type shortReads struct{ r io.Reader }

func (s shortReads) Read(p []byte) (int, error) { return s.r.Read(p[:min(len(p), 16)]) }
