package amqp

import (
	"context"
	"regexp"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestTracedConsumerNotCheckpointed: a consumer a services rule calls traced (its own tracer
// checkpoints what it consumes) gets no consume checkpoint from the proxy, by Basic.Consume or
// Basic.Get, and still gets every message with its context; an untraced consumer of the same
// messages (a second queue of a fanout exchange) is checkpointed as before.
func TestTracedConsumerNotCheckpointed(t *testing.T) {
	h := startProxy(t, func(c *Config) {
		c.Services = &proxy.Services{Default: "default-svc", Rules: []proxy.ServiceRule{
			{Traced: true, ClientID: regexp.MustCompile(`^traced-reader$`)},
		}}
	})
	pub := dial(t, h.url, "writer", 0)
	tracedQ := declareQueue(t, pub, unique("traced"))
	plainQ := declareQueue(t, pub, unique("plain"))
	ex := unique("traced-fanout")
	declareExchange(t, pub, ex, "fanout", tracedQ, "")
	declareExchange(t, pub, ex, "fanout", plainQ, "")
	const n = 10
	ch := channel(t, pub)
	for range n {
		if err := ch.PublishWithContext(context.Background(), ex, "", false, false, amqp091.Publishing{Body: []byte("m")}); err != nil {
			t.Fatal(err)
		}
	}

	read := func(name, q string, viaGet int) {
		t.Helper()
		ch := channel(t, dial(t, h.url, name, 0))
		check := func(d amqp091.Delivery) {
			if _, ok := d.Headers[pathway.HeaderKey]; !ok {
				t.Errorf("%s: a message came without %s", name, pathway.HeaderKey)
			}
		}
		for i := 0; i < viaGet; {
			d, ok, err := ch.Get(q, true)
			if err != nil {
				t.Fatalf("%s: get: %v", name, err)
			}
			if ok {
				check(d)
				i++
			}
		}
		ds, err := ch.Consume(q, "", true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		for range n - viaGet {
			check(<-ds)
		}
	}
	read("traced-reader", tracedQ, 3)
	read("plain-reader", plainQ, 3)

	consumes := func(service string) int {
		k := 0
		for _, p := range with(h.rec.points(), "direction:in") {
			if p.Service == service {
				k++
			}
		}
		return k
	}
	waitFor(t, "the plain reader's consume checkpoints", func() bool { return consumes("plain-reader") >= n })
	if got := consumes("plain-reader"); got != n {
		t.Errorf("plain reader: %d consume checkpoints, want %d", got, n)
	}
	if got := consumes("traced-reader"); got != 0 {
		t.Errorf("traced reader: %d consume checkpoints, want none (its tracer takes them)", got)
	}
}
