package amqp

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// stepReader hands a pump one chunk at a time and tells when the pump has taken in everything
// it was given and asks for more, so a replay of both directions runs in the captured order.
type stepReader struct {
	in   chan []byte
	idle chan struct{}
	buf  []byte
}

func newStepReader() *stepReader {
	return &stepReader{in: make(chan []byte), idle: make(chan struct{}, 1)}
}

func (r *stepReader) Read(p []byte) (int, error) {
	if len(r.buf) == 0 {
		r.idle <- struct{}{}
		b, ok := <-r.in
		if !ok {
			return 0, io.EOF
		}
		r.buf = b
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// step gives the pump b and waits until it has handled all of it.
func (r *stepReader) step(t *testing.T, what string, b []byte, done <-chan error) {
	t.Helper()
	select {
	case r.in <- b:
	case err := <-done:
		t.Fatalf("%s: a pump ended early: %v", what, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: the pump takes no input", what)
	}
	r.wait(t, what)
}

func (r *stepReader) wait(t *testing.T, what string) {
	t.Helper()
	select {
	case <-r.idle:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: the pump did not come back for more", what)
	}
}

// replaySession runs a captured conversation through an offline session, both directions in the
// order the proxy read them, and returns what each side was sent.
func replaySession(t *testing.T, s *session, tl *timeline) (toBroker, toClient []byte) {
	cr, br := newStepReader(), newStepReader()
	var cout, bout bytes.Buffer
	done := make(chan error, 2)
	go func() { done <- s.fromClient(newConnReader(cr, nil), newConnWriter(&cout)) }()
	go func() { done <- s.fromBroker(newConnReader(br, nil), newConnWriter(&bout)) }()
	cr.wait(t, "client start")
	br.wait(t, "broker start")
	skip := len(protocolHeader) // the session reads the protocol header before the pumps start
	for i, c := range tl.chunks {
		b, r := c.b, br
		if !c.broker {
			r = cr
			n := min(skip, len(b))
			b, skip = b[n:], skip-n
			if len(b) == 0 {
				continue
			}
		}
		r.step(t, fmt.Sprintf("chunk %d", i), b, done)
	}
	close(cr.in)
	close(br.in)
	for range 2 {
		if err := <-done; err != io.EOF {
			t.Fatalf("replay ended with %v", err)
		}
	}
	return cout.Bytes(), bout.Bytes()
}

// TestGoldenSession replays whole conversations captured between real clients (amqp091-go,
// amqplib, pika) and RabbitMQ, in the order the proxy read them: the client receives the broker's bytes
// unchanged, the broker receives the recorded proxy output (<name>.proxied), and the checkpoints
// and error events are the recorded ones (<name>.observed): a consume per Basic.Deliver and
// Basic.GetOk, tied to its queue and chained to the header the proxy put in, and the broker's
// Basic.Return, Basic.Nack and Channel.Close reported against where the message went.
func TestGoldenSession(t *testing.T) {
	if *update {
		recaptureGolden(t)
	}
	paths, err := filepath.Glob(filepath.Join(goldenDir, "*.session"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no golden sessions in %s (%v): run go test -run TestGolden -update", goldenDir, err)
	}
	for _, path := range paths {
		name := strings.TrimSuffix(filepath.Base(path), ".session")
		t.Run(name, func(t *testing.T) {
			tl := readTimeline(t, path)
			rec, errs := &recorder{}, &errRecorder{}
			s := offlineSession(t, rec)
			s.p.errs = errs
			toBroker, toClient := replaySession(t, s, tl)

			if want := tl.side(true); !bytes.Equal(toClient, want) {
				t.Errorf("the client got %d bytes that differ from the broker's %d", len(toClient), len(want))
			}
			proxied, err := os.ReadFile(filepath.Join(goldenDir, name+".proxied"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(toBroker, proxied) {
				t.Errorf("the broker got other bytes than %s.proxied", name)
			}

			var deliveries int
			for _, f := range frames(t, tl.side(true)) {
				if f.Type == frameMethod && (methodOf(f.Payload) == basicDeliver || methodOf(f.Payload) == basicGetOk) {
					deliveries++
				}
			}
			var got strings.Builder
			var in int
			published := map[uint64]bool{}
			for _, p := range rec.points() {
				if hasTag(p, "direction:out") != "" {
					published[p.Hash] = true
				}
			}
			for _, p := range rec.points() {
				fmt.Fprintf(&got, "point service=%s tags=%s hash=%d parent=%d size=%d pathway_latency=%d edge_latency=%d\n",
					p.Service, strings.Join(p.EdgeTags, ","), p.Hash, p.ParentHash, p.PayloadSize, p.PathwayLatency, p.EdgeLatency)
				if hasTag(p, "direction:in") != "" {
					in++
					if !published[p.ParentHash] || hasTag(p, "topic:") == "" {
						t.Errorf("consume point without a queue or not chained to a publish: %+v", p)
					}
				}
			}
			if in != deliveries || deliveries == 0 {
				t.Errorf("%d consume points for %d Basic.Deliver and Basic.GetOk", in, deliveries)
			}
			for _, e := range errs.events() {
				fmt.Fprintf(&got, "event category=%s operation=%s code=%d name=%s retriable=%v messages=%d edge=%+v message=%q\n",
					e.Category, e.Operation, e.Code, e.Name, e.Retriable, e.Messages, e.Edge, e.Message)
			}
			want := filepath.Join(goldenDir, name+".observed")
			if *update {
				if err := os.WriteFile(want, []byte(got.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			wb, err := os.ReadFile(want)
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != string(wb) {
				t.Errorf("observed differs from %s:\n%s", want, got.String())
			}
		})
	}
}
