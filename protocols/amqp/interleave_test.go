package amqp

import (
	"bytes"
	"encoding/binary"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/dsmproxy/dsmproxy/pathway"
)

func method(class, id uint16, args ...[]byte) []byte {
	p := binary.BigEndian.AppendUint16(nil, class)
	p = binary.BigEndian.AppendUint16(p, id)
	return append(p, bytes.Join(args, nil)...)
}

// byChannel groups the frames of a stream by channel, in order.
func byChannel(t *testing.T, stream []byte) map[uint16][][]byte {
	out := map[uint16][][]byte{}
	for _, f := range frames(t, stream) {
		out[f.Channel] = append(out[f.Channel], f.Raw)
	}
	return out
}

// TestInterleavedChannels: frames of different channels may interleave between a message's
// method, content header and body (AMQP 0-9-1 4.2.6). Neither RabbitMQ nor the clients here do
// it, so the streams are built: publishes on two channels, and deliveries to two consumers,
// whose frames alternate. Each channel's frames come out as they would alone, each message
// gets its own header spliced or read, and each checkpoint names its own queue.
func TestInterleavedChannels(t *testing.T) {
	publish := func(rk string) []byte {
		return method(classBasic, 40, []byte{0, 0}, sstr(""), sstr(rk), []byte{0})
	}
	hdr := contentPayload(3, 0)
	m1, m2 := appendFrame(nil, frameMethod, 1, publish("q1")), appendFrame(nil, frameMethod, 2, publish("q2"))
	h1, h2 := appendFrame(nil, frameHeader, 1, hdr), appendFrame(nil, frameHeader, 2, hdr)
	b1, b2 := appendFrame(nil, frameBody, 1, []byte("aaa")), appendFrame(nil, frameBody, 2, []byte("bbb"))
	serial := slices.Concat(m1, h1, b1, m2, h2, b2)
	interleaved := slices.Concat(m1, m2, h2, h1, b2, b1)

	run := func(stream []byte) ([]byte, *recorder) {
		rec := &recorder{}
		s := offlineSession(t, rec)
		var out bytes.Buffer
		w := newConnWriter(&out)
		if err := s.fromClient(newConnReader(bytes.NewReader(stream), nil), w); err != io.EOF {
			t.Fatalf("client stream: %v", err)
		}
		w.Flush()
		return out.Bytes(), rec
	}
	alone, _ := run(serial)
	mixed, rec := run(interleaved)
	want, got := byChannel(t, alone), byChannel(t, mixed)
	for _, ch := range []uint16{1, 2} {
		if len(got[ch]) != 3 || !slices.EqualFunc(got[ch], want[ch], bytes.Equal) {
			t.Errorf("channel %d: interleaved publish became %x, alone %x", ch, got[ch], want[ch])
		}
		if !bytes.Contains(got[ch][1], []byte(pathway.HeaderKey)) {
			t.Errorf("channel %d: content header without the pathway context", ch)
		}
	}
	for _, q := range []string{"q1", "q2"} {
		if n := len(with(rec.points(), "direction:out", "topic:"+q, "type:rabbitmq")); n != 1 {
			t.Errorf("%d publish checkpoints on %s, want 1", n, q)
		}
	}

	// Deliveries: the consumers' tags name their queues (Basic.Consume, then ConsumeOk); the
	// broker's frames of two deliveries alternate, each header carrying its own context.
	rec2 := &recorder{}
	s := offlineSession(t, rec2)
	var consume []byte
	for ch, q := range map[uint16]string{1: "q1", 2: "q2"} {
		consume = appendFrame(consume, frameMethod, ch, method(classBasic, 20, []byte{0, 0}, sstr(q), sstr("tag-"+q), []byte{0}, lstr(nil)))
	}
	if err := s.fromClient(newConnReader(bytes.NewReader(consume), nil), newConnWriter(io.Discard)); err != io.EOF {
		t.Fatalf("consume stream: %v", err)
	}
	ctx1 := pathway.Context{Hash: 0x1111, PathwayStart: testCtx.PathwayStart, EdgeStart: testCtx.EdgeStart}
	ctx2 := pathway.Context{Hash: 0x2222, PathwayStart: testCtx.PathwayStart, EdgeStart: testCtx.EdgeStart}
	withCtx := func(c pathway.Context) []byte {
		return contentPayload(3, 0x2000, table(entry(pathway.HeaderKey, 'S', lstr(c.AppendBase64(nil)))))
	}
	deliver := func(q string) []byte {
		return method(classBasic, 60, sstr("tag-"+q), binary.BigEndian.AppendUint64(nil, 1), []byte{0}, sstr(""), sstr(q))
	}
	var broker []byte
	for ch, q := range map[uint16]string{1: "q1", 2: "q2"} {
		broker = appendFrame(broker, frameMethod, ch, method(classBasic, 21, sstr("tag-"+q)))
	}
	broker = slices.Concat(broker,
		appendFrame(nil, frameMethod, 1, deliver("q1")), appendFrame(nil, frameMethod, 2, deliver("q2")),
		appendFrame(nil, frameHeader, 2, withCtx(ctx2)), appendFrame(nil, frameHeader, 1, withCtx(ctx1)),
		appendFrame(nil, frameBody, 1, []byte("aaa")), appendFrame(nil, frameBody, 2, []byte("bbb")))
	var out bytes.Buffer
	w := newConnWriter(&out)
	if err := s.fromBroker(newConnReader(bytes.NewReader(broker), nil), w); err != io.EOF {
		t.Fatalf("broker stream: %v", err)
	}
	w.Flush()
	if !bytes.Equal(out.Bytes(), broker) {
		t.Errorf("deliveries changed on their way to the client")
	}
	for q, parent := range map[string]uint64{"q1": ctx1.Hash, "q2": ctx2.Hash} {
		pts := with(rec2.points(), "direction:in", "topic:"+q, "type:rabbitmq")
		if len(pts) != 1 || pts[0].ParentHash != parent {
			t.Errorf("consume checkpoints on %s: %+v, want one with parent %x", q, pts, parent)
		}
	}
}

// TestFramesBeforeASlowBodyGoOut: the broker's frames before a body frame that has only partly
// arrived (a heartbeat here) reach the client without waiting for the rest of the body.
func TestFramesBeforeASlowBodyGoOut(t *testing.T) {
	s := offlineSession(t, nil)
	in, feed := io.Pipe()
	out, sink := io.Pipe()
	w := newConnWriter(sink)
	done := make(chan error, 1)
	go func() { done <- s.fromBroker(newConnReader(in, nil), w) }()
	heartbeat := appendFrame(nil, frameHeartbeat, 0, nil)
	body := appendFrame(nil, frameBody, 1, bytes.Repeat([]byte("b"), 100))
	go feed.Write(append(append([]byte{}, heartbeat...), body[:50]...)) // the rest of the body waits
	first := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(heartbeat)+50)
		io.ReadFull(out, b)
		first <- b
	}()
	select {
	case got := <-first:
		if !bytes.Equal(got, append(append([]byte{}, heartbeat...), body[:50]...)) {
			t.Fatalf("client got %x", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the heartbeat waited for the rest of the body frame")
	}
	go feed.Write(body[50:])
	rest := make([]byte, len(body)-50)
	if _, err := io.ReadFull(out, rest); err != nil || !bytes.Equal(rest, body[50:]) {
		t.Fatalf("the rest of the body: %x, %v", rest, err)
	}
	feed.Close()
	if err := <-done; err != io.EOF && err != io.ErrUnexpectedEOF {
		t.Errorf("broker stream ended with %v", err)
	}
}
