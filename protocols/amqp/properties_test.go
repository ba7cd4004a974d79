package amqp

import (
	"bytes"
	"context"
	"io"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/dsmproxy/dsmproxy/pathway"
)

var pikaPublisher = filepath.Join("..", "..", "testdata", "amqp", "python", "publish.py")

// everyFieldType is a header table with every field type amqp091-go writes, nested too.
func everyFieldType() amqp091.Table {
	return amqp091.Table{
		"bool": true, "i8": int8(-8), "u8": uint8(200), "i16": int16(-1600), "u16": uint16(60000),
		"i32": int32(-320000), "u32": uint32(4000000000), "i64": int64(-1) << 50, "f32": float32(1.25),
		"f64": -2.5, "dec": amqp091.Decimal{Scale: 3, Value: -12345}, "str": "text", "bytes": []byte{0xCE, 0, 1},
		"ts": time.Unix(1700000000, 0), "void": nil, "empty": amqp091.Table{},
		"nested": amqp091.Table{"a": amqp091.Table{"b": []any{int8(1), "two", nil, []byte("x"), amqp091.Table{}}}},
		"arr":    []any{true, uint16(7), float32(0.5), amqp091.Decimal{Scale: 1, Value: 15}, []any{}, time.Unix(1, 0)},
	}
}

// contentHeaders collects the content header frames a broker sends to the clients of a proxy.
type contentHeaders struct {
	mu  sync.Mutex
	buf []byte // one connection's stream
}

func (c *contentHeaders) tap(uint64) io.Writer { return c }

func (c *contentHeaders) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.buf = append(c.buf, p...)
	c.mu.Unlock()
	return len(p), nil
}

// payloads returns the content header payloads in the order the broker sent them.
func (c *contentHeaders) payloads(t *testing.T) [][]byte {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [][]byte
	for s := c.buf; len(s) > 0; {
		f, rest, err := splitFrame(s)
		if err != nil {
			t.Fatalf("broker stream: %v", err)
		}
		if f.Type == frameHeader {
			out = append(out, bytes.Clone(f.Payload))
		}
		s = rest
	}
	return out
}

// startTappedProxy is startProxy with tapBroker set before the proxy starts.
func startTappedProxy(t *testing.T, tapBroker func(uint64) io.Writer) *harness {
	t.Helper()
	return startProxyWith(t, nil, func(p *Proxy) { p.tapBroker = tapBroker })
}

// getAll fetches every message of q.
func getAll(t *testing.T, ch *amqp091.Channel, q string) []amqp091.Delivery {
	t.Helper()
	var out []amqp091.Delivery
	for {
		d, ok, err := ch.Get(q, true)
		if err != nil {
			t.Fatalf("Basic.Get %s: %v", q, err)
		}
		if !ok {
			return out
		}
		out = append(out, d)
	}
}

// TestEveryPropertyAndFieldTypeIntact: messages with every basic property and every field type
// in their headers table reach a consumer as they do direct, plus the pathway entry, whatever
// the client: pika's content headers (pika keeps its tables' order) are compared byte for byte
// as the broker hands them on, amqp091-go's (whose tables are Go maps, written in random order)
// as the client decodes them. pika publishes with frame_max 4096 and 8192: a 1 MiB body in
// hundreds of body frames arrives whole, and of two headers just under frame_max the one the
// entry would push over it goes unmodified.
func TestEveryPropertyAndFieldTypeIntact(t *testing.T) {
	needPika(t)
	h := startProxy(t, nil)
	var seen contentHeaders
	getter := startTappedProxy(t, seen.tap) // only to watch what the broker sends its client
	setup := dial(t, directURL, "setup", 0)
	gch := channel(t, dial(t, getter.url, "getter", 0))

	goMsg := fullProps("every field type", everyFieldType())
	goMsg.UserId = "guest" // RabbitMQ checks it is the connection's user
	var goGot [2]amqp091.Delivery
	for i, url := range []string{directURL, h.url} {
		q := declareQueue(t, setup, unique("props-go"))
		ch := channel(t, dial(t, url, "go-publisher", 0))
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q, false, false, goMsg)
		if err != nil {
			t.Fatal(err)
		}
		if !dc.Wait() {
			t.Fatal("publish nacked")
		}
		ds := getAll(t, gch, q)
		if len(ds) != 1 {
			t.Fatalf("%d messages in %s, want 1", len(ds), q)
		}
		goGot[i] = ds[0]
	}
	if v, _ := goGot[1].Headers[pathway.HeaderKey].(string); len(v) != pathway.Base64Len {
		t.Errorf("amqp091-go message through the proxy: pathway header %q", v)
	}
	direct, prox := props(goGot[0]), props(goGot[1])
	direct[14], prox[14] = "", "" // the queues differ
	if !reflect.DeepEqual(direct, prox) || !bytes.Equal(goGot[0].Body, goGot[1].Body) {
		t.Errorf("amqp091-go message differs:\ndirect %#v\nproxy  %#v", direct, prox)
	}

	for _, frameMax := range []int{4096, 8192} {
		seen.mu.Lock()
		seen.buf = seen.buf[:0:0]
		seen.mu.Unlock()
		var got [2][]amqp091.Delivery
		for i, url := range []string{directURL, h.url} {
			q := declareQueue(t, setup, unique("props-pika"))
			out, err := exec.Command(debianPython, pikaPublisher, url, q, strconv.Itoa(frameMax)).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", pikaPublisher, err, out)
			}
			got[i] = getAll(t, gch, q)
		}
		if len(got[0]) != 4 || len(got[1]) != 4 {
			t.Fatalf("frame_max %d: %d messages direct, %d through the proxy, want 4", frameMax, len(got[0]), len(got[1]))
		}
		// The getter fetched the direct run's four, then the proxied run's.
		hs := seen.payloads(t)
		if len(hs) < 8 {
			t.Fatalf("frame_max %d: %d content headers seen", frameMax, len(hs))
		}
		hs = hs[len(hs)-8:]
		for i := range 4 {
			d, p := hs[i], hs[4+i]
			if !bytes.Equal(got[0][i].Body, got[1][i].Body) {
				t.Errorf("frame_max %d, message %d: bodies differ (%d and %d bytes)", frameMax, i, len(got[0][i].Body), len(got[1][i].Body))
			}
			dh, err := parseContentHeader(d)
			if err != nil {
				t.Fatal(err)
			}
			ph, err := parseContentHeader(p)
			if err != nil {
				t.Fatal(err)
			}
			injected := ph.CtxEnd != 0
			if wantInjected := i != 3; injected != wantInjected {
				t.Errorf("frame_max %d, message %d (%d-byte header frame): pathway header added %v, want %v", frameMax, i, len(d)+frameOverhead, injected, wantInjected)
			}
			want := d
			if injected {
				want = spliceHeader(nil, d, &dh, ph.Ctx)
			}
			if !bytes.Equal(want, p) {
				t.Errorf("frame_max %d, message %d: content header through the proxy is not the direct one plus the pathway entry\ndirect %x\nproxy  %x", frameMax, i, d, p)
			}
		}
	}
	pts := with(h.rec.points(), "direction:out")
	if len(pts) != 1+2*4 {
		t.Errorf("%d publish checkpoints, want 9", len(pts))
	}
	if st := h.p.Stats(); st.Injected != 1+2*3 || st.SkippedFrameMax != 2 || st.DecodeErrors != 0 {
		t.Errorf("stats: %d injected (want 7), %d skipped for frame_max (want 2), %d decode errors", st.Injected, st.SkippedFrameMax, st.DecodeErrors)
	}
}

// TestRedeliveriesCheckpointedAgain: a message requeued (Basic.Reject and Basic.Nack with
// requeue, Basic.Recover) is delivered again, and each delivery is a consume checkpoint with
// the publish as its parent, as a tracer checkpoints each delivery its consumer gets.
func TestRedeliveriesCheckpointedAgain(t *testing.T) {
	h := startProxy(t, nil)
	pc := dial(t, h.url, "redeliver-producer", 0)
	q := declareQueue(t, pc, unique("redeliver"))
	if err := channel(t, pc).PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("again")}); err != nil {
		t.Fatal(err)
	}
	ch := channel(t, dial(t, h.url, "redeliver-consumer", 0))
	ds, err := ch.Consume(q, "redeliver", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	next := func(redelivered bool) amqp091.Delivery {
		t.Helper()
		select {
		case d := <-ds:
			if d.Redelivered != redelivered {
				t.Errorf("delivery redelivered=%v, want %v", d.Redelivered, redelivered)
			}
			return d
		case <-time.After(30 * time.Second):
			t.Fatal("no delivery")
		}
		return amqp091.Delivery{}
	}
	next(false).Reject(true)
	next(true) // left unacked: Basic.Recover requeues it
	//lint:ignore SA1019 deprecated by RabbitMQ, still served, and clients still send it
	if err := ch.Recover(true); err != nil {
		t.Fatal(err)
	}
	next(true).Nack(false, true)
	next(true).Ack(false)
	waitFor(t, "4 consume checkpoints", func() bool { return len(with(h.rec.points(), "direction:in")) == 4 })
	pts := h.rec.points()
	out := with(pts, "direction:out")
	if len(out) != 1 {
		t.Fatalf("%d publish checkpoints, want 1", len(out))
	}
	for i, p := range with(pts, "direction:in") {
		if p.ParentHash != out[0].Hash || p.Hash != with(pts, "direction:in")[0].Hash {
			t.Errorf("delivery %d: hash %x parent %x, want parent %x (the publish) and the first delivery's hash", i, p.Hash, p.ParentHash, out[0].Hash)
		}
	}
}
