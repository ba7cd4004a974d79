package amqp

import (
	"testing"
	"time"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestBrokerCancelTracked: when a consumed queue is deleted RabbitMQ cancels its consumers
// (Basic.Cancel); the client just stops receiving, which many consumers never notice. The
// cancel is a broker error on the queue's consume edge, under the consumer's service.
func TestBrokerCancelTracked(t *testing.T) {
	h := startProxy(t, nil)
	dc := dial(t, directURL, "admin", 0)
	q := declareQueue(t, dc, unique("cancelled"))
	ch := channel(t, dial(t, h.url, "worker", 0))
	cancels := ch.NotifyCancel(make(chan string, 1))
	if _, err := ch.Consume(q, "the-worker", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := channel(t, dc).QueueDelete(q, false, false, false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cancels:
	case <-time.After(30 * time.Second):
		t.Fatal("no Basic.Cancel from the broker")
	}
	want := pathway.Edge{Direction: pathway.In, Type: pathway.TypeRabbitMQ, Topic: q}
	waitFor(t, "the cancel event", func() bool {
		for _, e := range h.errs.events() {
			if e.Category == errtrack.BrokerError && e.Operation == "Basic.Cancel" && e.Edge == want && e.Service == "worker" {
				return true
			}
		}
		return false
	})
}
