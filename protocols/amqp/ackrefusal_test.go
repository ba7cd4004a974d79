package amqp

import (
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestAckRefusalNamesTheQueue: a consumer that acks a delivery twice (or on the wrong channel)
// gets its channel closed, PRECONDITION_FAILED "unknown delivery tag", and stops consuming. On
// a channel whose consumers all read one queue the refusal names that queue's consume edge.
func TestAckRefusalNamesTheQueue(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "double-acker", 0)
	q := declareQueue(t, c, unique("double-ack"))
	publishTo(t, channel(t, c), q, "x")
	ch := channel(t, c)
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	ds, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := <-ds
	d.Ack(false)
	d.Ack(false)
	if e := <-closed; e == nil || e.Code != 406 {
		t.Fatalf("channel closed with %v, want PRECONDITION_FAILED", e)
	}
	want := pathway.Edge{Direction: pathway.In, Type: pathway.TypeRabbitMQ, Topic: q}
	waitFor(t, "the refusal event", func() bool {
		for _, e := range h.errs.events() {
			if e.Operation == "Basic.Ack" && e.Code == 406 {
				if e.Edge != want {
					t.Fatalf("Basic.Ack refusal on edge %v, want %v", e.Edge, want)
				}
				return true
			}
		}
		return false
	})
}
