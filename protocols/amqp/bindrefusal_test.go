package amqp

import (
	"errors"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestBindRefusalsNameTheBinding: RabbitMQ refuses a binding to an exchange that does not exist
// (404, a common start-up race: the consumer binds before the producer declared the exchange).
// The broker error names what the binding concerned: for Queue.Bind both the exchange and the
// queue (not the queue alone, which exists), for Exchange.Bind the exchange the broker says is
// missing, whether the source or the destination.
func TestBindRefusalsNameTheBinding(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "binder", 0)
	q := declareQueue(t, c, unique("bind-queue"))
	present, missing := unique("bind-present"), unique("bind-missing")
	declareExchange(t, c, present, "fanout", "", "")
	for _, tc := range []struct {
		op   string
		do   func(*amqp091.Channel) error
		edge pathway.Edge
	}{
		{"Queue.Bind", func(ch *amqp091.Channel) error { return ch.QueueBind(q, "k", missing, false, nil) },
			pathway.Edge{Type: pathway.TypeRabbitMQ, Exchange: missing, Topic: q}},
		// ExchangeBind(destination, key, source, ...).
		{"Exchange.Bind", func(ch *amqp091.Channel) error { return ch.ExchangeBind(present, "k", missing, false, nil) },
			pathway.Edge{Type: pathway.TypeRabbitMQ, Exchange: missing}},
		{"Exchange.Bind", func(ch *amqp091.Channel) error { return ch.ExchangeBind(missing, "k", present, false, nil) },
			pathway.Edge{Type: pathway.TypeRabbitMQ, Exchange: missing}},
	} {
		before := len(h.errs.events())
		var amqpErr *amqp091.Error
		if err := tc.do(channel(t, c)); !errors.As(err, &amqpErr) || amqpErr.Code != 404 {
			t.Fatalf("%s: %v, want NOT_FOUND", tc.op, err)
		}
		waitFor(t, tc.op+" refusal event", func() bool { return len(h.errs.events()) > before })
		evs := h.errs.events()[before:]
		if len(evs) != 1 || evs[0].Operation != tc.op || evs[0].Code != 404 || evs[0].Edge != tc.edge {
			t.Errorf("%s refusal events %+v, want one on edge %v", tc.op, evs, tc.edge)
		}
	}
}
