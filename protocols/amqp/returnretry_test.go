package amqp

import (
	"context"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// TestReturnRetriedLaterKeepsThePathway: a busy publisher retries a returned message after a
// backoff, by which time it has published many others (more than the latest values each
// connection remembers). The returned context is still the proxy's own: the retry is
// checkpointed with the first publish as parent and gets a new context.
func TestReturnRetriedLaterKeepsThePathway(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "busy-retrier", 0)
	q := declareQueue(t, c, unique("retry-later"))
	ch := channel(t, c)
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	missing := unique("no-route-yet")
	publish := func(rk string, p amqp091.Publishing) {
		t.Helper()
		if err := ch.PublishWithContext(context.Background(), "", rk, true, false, p); err != nil {
			t.Fatal(err)
		}
	}
	publish(missing, amqp091.Publishing{Body: []byte("first")})
	r := <-returns
	const others = 2 * ownValues
	for range others {
		publish(q, amqp091.Publishing{Body: []byte("other")})
	}
	publish(q, amqp091.Publishing{Headers: r.Headers, Body: r.Body})
	ds := consumeN(t, channel(t, c), q, others+1)
	if got := ds[others].Headers[pathway.HeaderKey]; got == r.Headers[pathway.HeaderKey] {
		t.Errorf("the retry kept the returned context %v", got)
	}
	first := with(h.rec.points(), "direction:out", "topic:"+missing)
	retried := 0
	for _, p := range with(h.rec.points(), "direction:out", "topic:"+q) {
		if len(first) == 1 && p.ParentHash == first[0].Hash {
			retried++
		}
	}
	if len(first) != 1 || retried != 1 {
		t.Errorf("%d first publishes, %d retries with it as parent; want 1 and 1", len(first), retried)
	}
}
