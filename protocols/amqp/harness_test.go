package amqp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// rabbitAddr is the local RabbitMQ the tests run against (test-peers.md section 3).
const rabbitAddr = "127.0.0.1:5672"

// needRabbit fails the test when the broker does not answer: these tests never skip.
func needRabbit(t testing.TB) {
	t.Helper()
	c, err := net.DialTimeout("tcp", rabbitAddr, 5*time.Second)
	if err != nil {
		t.Fatalf("RabbitMQ does not answer on %s (%v): start it with `rabbitmq-server -detached` (guest/guest, see shared/docs/test-peers.md section 3)", rabbitAddr, err)
	}
	c.Close()
}

// recorder is a test Observer.
type recorder struct {
	mu  sync.Mutex
	pts []pathway.Point
}

func (r *recorder) Add(p pathway.Point) bool {
	r.mu.Lock()
	r.pts = append(r.pts, p)
	r.mu.Unlock()
	return true
}

func (r *recorder) Offset(pathway.Offset) bool { return true }

func (r *recorder) points() []pathway.Point {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.pts)
}

// with returns the points carrying every tag.
func with(pts []pathway.Point, tags ...string) []pathway.Point {
	var out []pathway.Point
	for _, p := range pts {
		ok := true
		for _, t := range tags {
			if !slices.Contains(p.EdgeTags, t) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, p)
		}
	}
	return out
}

// errRecorder is a test errtrack.Reporter.
type errRecorder struct {
	mu  sync.Mutex
	evs []errtrack.Event
}

func (r *errRecorder) Report(e errtrack.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, e)
	r.mu.Unlock()
}

func (r *errRecorder) events() []errtrack.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.evs)
}

type harness struct {
	p    *Proxy
	rec  *recorder
	errs *errRecorder
	url  string
}

// startProxy runs a proxy in front of the local RabbitMQ.
func startProxy(t testing.TB, mod func(*Config)) *harness {
	t.Helper()
	return startProxyWith(t, mod, nil)
}

// startProxyWith is startProxy with before run on the proxy before it starts (test hooks).
func startProxyWith(t testing.TB, mod func(*Config), before func(*Proxy)) *harness {
	t.Helper()
	needRabbit(t)
	h := &harness{rec: &recorder{}, errs: &errRecorder{}}
	cfg := Config{Listen: "127.0.0.1:0", Upstream: rabbitAddr, Env: "test", Observer: h.rec, Errors: h.errs,
		Services: &proxy.Services{Default: "default-svc"}, Log: zerolog.Nop()}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(p)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	h.p = p
	h.url = "amqp://guest:guest@" + p.Addr().String() + "/"
	return h
}

const directURL = "amqp://guest:guest@" + rabbitAddr + "/"

// dial opens an amqp091-go connection named name.
func dial(t testing.TB, url, name string, frameSize int) *amqp091.Connection {
	t.Helper()
	cfg := amqp091.Config{Properties: amqp091.Table{"connection_name": name}, FrameSize: frameSize, Heartbeat: 10 * time.Second}
	c, err := amqp091.DialConfig(url, cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func channel(t testing.TB, c *amqp091.Connection) *amqp091.Channel {
	t.Helper()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// unique returns a fresh name with prefix, so parallel and repeated runs never share queues.
func unique(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// declareQueue declares a queue that is deleted when the test ends.
func declareQueue(t testing.TB, c *amqp091.Connection, name string) string {
	t.Helper()
	ch := channel(t, c)
	defer ch.Close()
	q, err := ch.QueueDeclare(name, false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cleanupBroker(t, func(ch *amqp091.Channel) error { _, err := ch.QueueDelete(q.Name, false, false, false); return err })
	})
	return q.Name
}

// declareExchange declares an exchange of kind bound to queue with key; both are deleted at the end.
func declareExchange(t testing.TB, c *amqp091.Connection, name, kind, queue, key string) {
	t.Helper()
	ch := channel(t, c)
	defer ch.Close()
	if err := ch.ExchangeDeclare(name, kind, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cleanupBroker(t, func(ch *amqp091.Channel) error { return ch.ExchangeDelete(name, false, false) })
	})
	if queue != "" {
		if err := ch.QueueBind(queue, key, name, false, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// cleanupBroker runs f on a direct connection of its own (the test's may be closed by then).
func cleanupBroker(t testing.TB, f func(*amqp091.Channel) error) {
	c, err := amqp091.Dial(directURL)
	if err != nil {
		t.Errorf("cleanup dial: %v", err)
		return
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		t.Errorf("cleanup channel: %v", err)
		return
	}
	if err := f(ch); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}

// waitFor polls cond with a generous deadline (no timing is asserted).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// withoutCtx returns headers without the pathway entry.
func withoutCtx(h amqp091.Table) amqp091.Table {
	out := amqp091.Table{}
	for k, v := range h {
		if k != pathway.HeaderKey {
			out[k] = v
		}
	}
	return out
}

func hasTag(p pathway.Point, prefix string) string {
	for _, t := range p.EdgeTags {
		if strings.HasPrefix(t, prefix) {
			return t
		}
	}
	return ""
}
