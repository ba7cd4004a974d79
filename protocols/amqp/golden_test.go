package amqp

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
)

var update = flag.Bool("update", false, "recapture the golden client streams from real clients and rewrite the expected proxy output")

var goldenDir = filepath.Join("..", "..", "testdata", "amqp")

// goldenTime is the clock of the offline sessions that replay captures, so output is exact.
var goldenTime = time.UnixMilli(1700000000123)

type golden struct {
	name   string
	stream []byte // as the client sent it, from the protocol header on
}

// goldenFiles reads the captured client streams (<name>.client).
func goldenFiles(t testing.TB) []golden {
	paths, err := filepath.Glob(filepath.Join(goldenDir, "*.client"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no golden captures in %s (%v): run go test -run TestGolden -update", goldenDir, err)
	}
	var out []golden
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, golden{name: filepath.Base(p[:len(p)-len(".client")]), stream: b[8:]})
	}
	return out
}

// offlineSession is a session with no connections, for replaying captures and benchmarks.
func offlineSession(t testing.TB, obs Observer) *session {
	t.Helper()
	p, err := New(Config{Listen: "127.0.0.1:0", Upstream: "127.0.0.1:1", Env: "golden", Observer: obs,
		Clock: func() time.Time { return goldenTime }, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	s := &session{p: p, log: zerolog.Nop(), pub: map[uint16]*pubState{}, del: map[uint16]*delState{}, shared: map[uint16]*chanShared{}}
	s.setService("", "")
	return s
}

// replay runs a captured client stream through the client-to-broker path.
func replay(t testing.TB, stream []byte) ([]byte, *session) {
	s := offlineSession(t, nil)
	var out bytes.Buffer
	w := newConnWriter(&out)
	if err := s.fromClient(newConnReader(bytes.NewReader(stream), nil), w); err != io.EOF {
		t.Fatalf("replay ended with %v", err)
	}
	return out.Bytes(), s
}

func frames(t testing.TB, b []byte) []frame {
	var fs []frame
	for len(b) > 0 {
		f, rest, err := splitFrame(b)
		if err != nil {
			t.Fatalf("frame %d: %v", len(fs), err)
		}
		fs = append(fs, f)
		b = rest
	}
	return fs
}

// TestGoldenSplice replays client streams captured from amqp091-go, amqplib and pika: the output
// is the recorded one, has the same frames in the same order (none added, dropped or split), and
// each published content header differs from the client's only by the added entry.
func TestGoldenSplice(t *testing.T) {
	if *update {
		recaptureGolden(t)
	}
	for _, g := range goldenFiles(t) {
		t.Run(g.name, func(t *testing.T) {
			out, s := replay(t, g.stream)
			want := filepath.Join(goldenDir, g.name+".proxied")
			wb, err := os.ReadFile(want)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, wb) {
				t.Errorf("output differs from %s", want)
			}
			in, got := frames(t, g.stream), frames(t, out)
			if len(in) != len(got) {
				t.Fatalf("%d frames in, %d out", len(in), len(got))
			}
			var spliced int
			for i := range in {
				if in[i].Type != got[i].Type || in[i].Channel != got[i].Channel {
					t.Fatalf("frame %d: type/channel %d/%d became %d/%d", i, in[i].Type, in[i].Channel, got[i].Type, got[i].Channel)
				}
				if bytes.Equal(in[i].Raw, got[i].Raw) {
					continue
				}
				h, err := parseContentHeader(in[i].Payload)
				if in[i].Type != frameHeader || err != nil {
					t.Fatalf("frame %d (type %d) changed", i, in[i].Type)
				}
				if back := unsplice(t, got[i].Payload, h.HasTable); !bytes.Equal(back, in[i].Payload) {
					t.Errorf("frame %d: more than the pathway entry changed", i)
				}
				spliced++
			}
			if st := s.p.Stats(); spliced == 0 || uint64(spliced) != st.Injected {
				t.Errorf("%d headers spliced, stats %+v", spliced, st)
			}
		})
	}
}

var captureGoldenOnce sync.Once

// recaptureGolden captures once per run, for whichever golden test runs first.
func recaptureGolden(t *testing.T) { captureGoldenOnce.Do(func() { captureGolden(t) }) }

// captureGolden records what amqp091-go, amqplib and pika send through a proxy, and the whole
// conversation of each with the broker (go test -update). amqp-tools is not among them: it
// publishes and gets in separate processes, so no one connection holds both.
func captureGolden(t *testing.T) {
	var mu sync.Mutex
	conns := map[uint64]*timeline{}
	// The replay's env and clock, so the hashes and times in the captured headers are the ones a
	// replay computes.
	h := startProxy(t, func(c *Config) { c.Env, c.Clock = "golden", func() time.Time { return goldenTime } })
	tap := func(broker bool) func(uint64) io.Writer {
		return func(id uint64) io.Writer {
			mu.Lock()
			defer mu.Unlock()
			if conns[id] == nil {
				conns[id] = &timeline{}
			}
			return timelineWriter{&mu, conns[id], broker}
		}
	}
	h.p.tap, h.p.tapBroker = tap(false), tap(true)
	save := func(name string) {
		mu.Lock()
		defer mu.Unlock()
		var biggest *timeline
		for id, tl := range conns {
			if biggest == nil || len(tl.side(false)) > len(biggest.side(false)) {
				biggest = tl
			}
			delete(conns, id)
		}
		if err := os.WriteFile(filepath.Join(goldenDir, name+".client"), biggest.side(false), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(goldenDir, name+".session"), biggest.encode(), 0o644); err != nil {
			t.Fatal(err)
		}
		out, _ := replay(t, biggest.side(false)[len(protocolHeader):])
		if err := os.WriteFile(filepath.Join(goldenDir, name+".proxied"), out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	setup := dial(t, directURL, "setup", 0)
	q := declareQueue(t, setup, "golden-q")
	gq := declareQueue(t, setup, "golden-get")
	full := "golden-full"
	sch := channel(t, setup)
	if _, err := sch.QueueDeclare(full, false, false, false, false, amqp091.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cleanupBroker(t, func(ch *amqp091.Channel) error { _, err := ch.QueueDelete(full, false, false, false); return err })
	})
	ex := "golden-x"
	declareExchange(t, setup, ex, "direct", q, "rk")

	c := dial(t, h.url, "golden-go", 4096) // small frames: the body below spans several
	ch := channel(t, c)
	ch.Confirm(false)
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 16))
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	ctx := context.Background()
	for _, m := range []struct {
		ex, rk    string
		mandatory bool
		p         amqp091.Publishing
	}{
		{"", q, false, amqp091.Publishing{Body: []byte("plain")}},
		{"", q, false, fullProps("full", richHeaders(1))},
		{ex, "rk", false, fullProps("direct", amqp091.Table{"k": "v"})},
		{ex, "rk", false, amqp091.Publishing{Body: bytes.Repeat([]byte("b"), 10000), Headers: amqp091.Table{}}},
		{"", gq, false, amqp091.Publishing{Body: []byte("to get")}},
		{ex, "nowhere", true, amqp091.Publishing{Body: []byte("returned")}}, // Basic.Return
		{"", full, false, amqp091.Publishing{Body: []byte("fits")}},
		{"", full, false, amqp091.Publishing{Body: []byte("rejected")}}, // Basic.Nack
	} {
		if err := ch.PublishWithContext(ctx, m.ex, m.rk, m.mandatory, false, m.p); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 8 {
		if cf := <-confirms; cf.Ack != (i != 7) {
			t.Fatalf("confirmation %d: %+v", i, cf)
		}
	}
	<-returns
	consumeN(t, ch, q, 4)
	gch := channel(t, c)
	if _, ok, err := gch.Get(gq, true); !ok || err != nil {
		t.Fatalf("Basic.Get: %v %v", ok, err)
	}
	if _, ok, err := gch.Get(gq, true); ok || err != nil { // Basic.GetEmpty
		t.Fatalf("second Basic.Get: %v %v", ok, err)
	}
	ech := channel(t, c)
	ech.PublishWithContext(ctx, "golden-missing", "k", false, false, amqp091.Publishing{Body: []byte("lost")})
	if _, ok, err := ech.Get(gq, true); ok || err == nil { // the broker's Channel.Close 404 ends the channel
		t.Fatalf("channel after publishing to a missing exchange: %v %v", ok, err)
	}
	c.Close()
	waitFor(t, "capture connection closed", func() bool { return h.p.ln.Conns() == 0 })
	save("amqp091-go")

	needNode(t)
	runNodePeer(t, h.url, q, declareQueue(t, setup, "golden-get-node"))
	waitFor(t, "capture connection closed", func() bool { return h.p.ln.Conns() == 0 })
	save("amqplib")

	needPika(t)
	runPeer(t, exec.Command(debianPython, pikaPeer, h.url, q, declareQueue(t, setup, "golden-get-pika")))
	waitFor(t, "capture connection closed", func() bool { return h.p.ln.Conns() == 0 })
	save("pika")

}

// timeline is one connection's traffic in the order the proxy read it: chunks from the client
// and from the broker, as each read returned them.
type timeline struct{ chunks []chunk }

type chunk struct {
	broker bool
	b      []byte
}

// side returns everything one side sent.
func (tl *timeline) side(broker bool) []byte {
	var out []byte
	for _, c := range tl.chunks {
		if c.broker == broker {
			out = append(out, c.b...)
		}
	}
	return out
}

// encode writes the chunks as 'c' or 'b', a big-endian uint32 length, the bytes (<name>.session).
func (tl *timeline) encode() []byte {
	var out []byte
	for _, c := range tl.chunks {
		side := byte('c')
		if c.broker {
			side = 'b'
		}
		out = binary.BigEndian.AppendUint32(append(out, side), uint32(len(c.b)))
		out = append(out, c.b...)
	}
	return out
}

func decodeTimeline(b []byte) (*timeline, error) {
	tl := &timeline{}
	for len(b) > 0 {
		if len(b) < 5 || (b[0] != 'c' && b[0] != 'b') {
			return nil, fmt.Errorf("bad chunk header at %d bytes from the end", len(b))
		}
		n := int(binary.BigEndian.Uint32(b[1:]))
		if 5+n > len(b) {
			return nil, fmt.Errorf("chunk of %d bytes in %d", n, len(b)-5)
		}
		tl.chunks = append(tl.chunks, chunk{broker: b[0] == 'b', b: b[5 : 5+n]})
		b = b[5+n:]
	}
	return tl, nil
}

// readTimeline reads and decodes a golden .session file.
func readTimeline(t testing.TB, path string) *timeline {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := decodeTimeline(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return tl
}

type timelineWriter struct {
	mu     *sync.Mutex
	tl     *timeline
	broker bool
}

func (w timelineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tl.chunks = append(w.tl.chunks, chunk{w.broker, append([]byte(nil), p...)})
	return len(p), nil
}
