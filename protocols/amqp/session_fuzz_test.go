package amqp

import (
	"bytes"
	"encoding/binary"
	"io"
	"path/filepath"
	"testing"
)

// tuneOkAt is where a Connection.TuneOk frame (12-byte payload on channel 0) starts in b, or -1.
func tuneOkAt(b []byte) int {
	return bytes.Index(b, []byte{frameMethod, 0, 0, 0, 0, 0, 12, 0, 10, 0, 31})
}

// withFrameMax is the conversation tl with the client's TuneOk frame_max set to fm.
func withFrameMax(tl *timeline, fm uint32) []byte {
	out := &timeline{}
	for _, c := range tl.chunks {
		b := bytes.Clone(c.b)
		if i := tuneOkAt(b); !c.broker && i >= 0 && i+17 <= len(b) {
			binary.BigEndian.PutUint32(b[i+13:], fm)
		}
		out.chunks = append(out.chunks, chunk{c.broker, b})
	}
	return out.encode()
}

// wholeFrames splits b after its last whole frame; bad is set when a frame after it is malformed
// (not merely cut short), so that nothing after it is ever relayed.
func wholeFrames(b []byte) (whole, rest []byte, bad bool) {
	r := b
	for len(r) > 0 {
		_, next, err := splitFrame(r)
		if err != nil {
			return b[:len(b)-len(r)], r, !errorsIsShort(r)
		}
		r = next
	}
	return b, nil, false
}

// errorsIsShort: r is the start of a frame that more bytes could complete.
func errorsIsShort(r []byte) bool {
	if len(r) < 7 {
		return true
	}
	return len(r) < 7+int(binary.BigEndian.Uint32(r[3:]))+1
}

// lenientTimeline reads b as the .session encoding whatever its bytes, so that the fuzzer's
// mutations stay conversations: a chunk's low side bit says whose it is ('b' and 'c' as encoded),
// and a length past the end takes what is left.
func lenientTimeline(b []byte) *timeline {
	tl := &timeline{}
	for len(b) >= 5 {
		n := min(int(binary.BigEndian.Uint32(b[1:])), len(b)-5)
		tl.chunks = append(tl.chunks, chunk{broker: b[0]&1 == 'b'&1, b: b[5 : 5+n]})
		b = b[5+n:]
	}
	return tl
}

// FuzzSession: any conversation (the .session encoding: chunks from the client or the broker)
// relayed through a session, whole frames at a time in the order given, is relayed frame for
// frame: no frame added, dropped, split or moved to another channel or type. Of the client's,
// only a published content header changes, and only by its pathway entry; of the broker's, only
// a delivered content header the entry takes past the client's frame_max, which comes without
// the entry and within the frame_max. Neither path panics, whatever the methods' arguments, the
// content headers' tables and the order of frames.
func FuzzSession(f *testing.F) {
	paths, err := filepath.Glob(filepath.Join(goldenDir, "*.session"))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no golden sessions in %s: %v", goldenDir, err)
	}
	for _, p := range paths {
		tl := readTimeline(f, p)
		f.Add(tl.encode())
		// The same conversation with a client frame_max each delivered header with an entry
		// exceeds by one byte: fitDelivery strips them.
		for _, fr := range frames(f, tl.side(true)) {
			if h, err := parseContentHeader(fr.Payload); fr.Type == frameHeader && err == nil && h.CtxEnd != 0 {
				f.Add(withFrameMax(tl, uint32(len(fr.Raw)-1)))
				break
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tl := lenientTimeline(b)
		s := offlineSession(t, nil)
		var pending [2][]byte // client, broker: bytes of a frame not yet whole
		var dead [2]bool
		skip := len(protocolHeader) // the session reads the client's protocol header before relaying
		for _, c := range tl.chunks {
			side, data := 0, c.b
			if c.broker {
				side = 1
			} else {
				n := min(skip, len(data))
				data, skip = data[n:], skip-n
			}
			if dead[side] {
				continue
			}
			pending[side] = append(pending[side], data...)
			in, rest, bad := wholeFrames(pending[side])
			pending[side] = bytes.Clone(rest)
			dead[side] = bad
			if len(in) == 0 {
				continue
			}
			var out bytes.Buffer
			var err error
			r, w := newConnReader(bytes.NewReader(in), nil), newConnWriter(&out)
			if c.broker {
				err = s.fromBroker(r, w)
			} else {
				err = s.fromClient(r, w)
			}
			if err != io.EOF {
				t.Fatalf("relaying whole frames ended with %v", err)
			}
			checkRelayed(t, c.broker, frames(t, in), frames(t, out.Bytes()), s.consumerFrameMax.Load())
		}
	})
}

// checkRelayed: out is in frame for frame, but for the content headers the proxy may change.
func checkRelayed(t *testing.T, broker bool, in, out []frame, frameMax uint32) {
	t.Helper()
	if len(in) != len(out) {
		t.Fatalf("broker %v: %d frames in, %d out", broker, len(in), len(out))
	}
	for i := range in {
		if in[i].Type != out[i].Type || in[i].Channel != out[i].Channel {
			t.Fatalf("broker %v, frame %d: type/channel %d/%d became %d/%d", broker, i, in[i].Type, in[i].Channel, out[i].Type, out[i].Channel)
		}
		if bytes.Equal(in[i].Raw, out[i].Raw) {
			continue
		}
		h, err := parseContentHeader(in[i].Payload)
		if in[i].Type != frameHeader || err != nil {
			t.Fatalf("broker %v, frame %d (type %d, %v) changed:\n in %x\nout %x", broker, i, in[i].Type, err, in[i].Raw, out[i].Raw)
		}
		h2, err := parseContentHeader(out[i].Payload)
		if err != nil || h2.BodySize != h.BodySize {
			t.Fatalf("broker %v, frame %d: the changed content header reads %+v, %v; the original %+v", broker, i, h2, err, h)
		}
		if broker {
			if h.CtxEnd == 0 || h2.CtxEnd != 0 || !bytes.Equal(out[i].Payload, stripCtx(nil, in[i].Payload, &h)) {
				t.Fatalf("frame %d: a delivered header changed otherwise than by losing its pathway entry:\n in %x\nout %x", i, in[i].Raw, out[i].Raw)
			}
			if frameMax == 0 || len(out[i].Raw) > int(frameMax) || len(in[i].Raw) <= int(frameMax) {
				t.Fatalf("frame %d: a delivered header of %d bytes stripped to %d for the client's frame_max %d", i, len(in[i].Raw), len(out[i].Raw), frameMax)
			}
			continue
		}
		if h2.CtxEnd == 0 {
			t.Fatalf("frame %d: a published header changed but has no pathway entry:\n in %x\nout %x", i, in[i].Raw, out[i].Raw)
		}
		if h.CtxEnd == 0 {
			if back := unsplice(t, out[i].Payload, h.HasTable); !bytes.Equal(back, in[i].Payload) {
				t.Fatalf("frame %d: more than the pathway entry changed:\n in %x\nout %x", i, in[i].Raw, out[i].Raw)
			}
		}
	}
}
