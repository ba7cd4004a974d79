package amqp

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"io"
	"os"
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
	w := bufio.NewWriter(&out)
	if err := s.fromClient(bufio.NewReader(bytes.NewReader(stream)), w); err != io.EOF {
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

// TestGoldenSplice replays client streams captured from amqp091-go and amqplib: the output is the
// recorded one, has the same frames in the same order (none added, dropped or split), and each
// published content header differs from the client's only by the added entry.
func TestGoldenSplice(t *testing.T) {
	if *update {
		captureGolden(t)
	}
	for _, g := range goldenFiles(t) {
		t.Run(g.name, func(t *testing.T) {
			out, s := replay(t, g.stream)
			want := filepath.Join(goldenDir, g.name+".proxied")
			if *update {
				if err := os.WriteFile(want, out, 0o644); err != nil {
					t.Fatal(err)
				}
			}
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

// captureGolden records what amqp091-go and amqplib send through a proxy (go test -update).
func captureGolden(t *testing.T) {
	var mu sync.Mutex
	taps := map[uint64]*bytes.Buffer{}
	h := startProxy(t, nil)
	h.p.tap = func(id uint64) io.Writer {
		mu.Lock()
		defer mu.Unlock()
		taps[id] = &bytes.Buffer{}
		return lockedWriter{&mu, taps[id]}
	}
	save := func(name string) {
		mu.Lock()
		defer mu.Unlock()
		var biggest *bytes.Buffer
		for id, b := range taps {
			if biggest == nil || b.Len() > biggest.Len() {
				biggest = b
			}
			delete(taps, id)
		}
		if err := os.WriteFile(filepath.Join(goldenDir, name+".client"), biggest.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	setup := dial(t, directURL, "setup", 0)
	q := declareQueue(t, setup, "golden-q")
	ex := "golden-x"
	declareExchange(t, setup, ex, "direct", q, "rk")

	c := dial(t, h.url, "golden-go", 4096) // small frames: the body below spans several
	ch := channel(t, c)
	ch.Confirm(false)
	ctx := context.Background()
	for _, m := range []struct {
		ex, rk string
		p      amqp091.Publishing
	}{
		{"", q, amqp091.Publishing{Body: []byte("plain")}},
		{"", q, fullProps("full", richHeaders(1))},
		{ex, "rk", fullProps("direct", amqp091.Table{"k": "v"})},
		{ex, "rk", amqp091.Publishing{Body: bytes.Repeat([]byte("b"), 10000), Headers: amqp091.Table{}}},
	} {
		if err := ch.PublishWithContext(ctx, m.ex, m.rk, false, false, m.p); err != nil {
			t.Fatal(err)
		}
	}
	consumeN(t, ch, q, 4)
	c.Close()
	waitFor(t, "capture connection closed", func() bool { return h.p.ln.Conns() == 0 })
	save("amqp091-go")

	needNode(t)
	runNodePeer(t, h.url, q, declareQueue(t, setup, "golden-get"))
	waitFor(t, "capture connection closed", func() bool { return h.p.ln.Conns() == 0 })
	save("amqplib")
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
