package amqp

import (
	"context"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TestTxReturnedPublishNotCounted: in Tx mode RabbitMQ routes a transaction's publishes at its
// commit and returns the unroutable mandatory ones (Basic.Return) before Tx.CommitOk. A returned
// publish reached no queue: like one returned in confirm mode it is not counted as produced,
// while the routable publish of the same commit is.
func TestTxReturnedPublishNotCounted(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "tx-returns", 0)
	q := declareQueue(t, c, unique("tx-routed"))
	ch := channel(t, c)
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	if err := ch.Tx(); err != nil {
		t.Fatal(err)
	}
	missing := unique("tx-no-route")
	for _, rk := range []string{missing, q} {
		if err := ch.PublishWithContext(context.Background(), "", rk, true, false, amqp091.Publishing{Body: []byte(rk)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	// The Return came before the CommitOk the call above waited for, and the proxy handled
	// both before forwarding them.
	if r := <-returns; r.RoutingKey != missing {
		t.Fatalf("returned %q, want %q", r.RoutingKey, missing)
	}
	if d := consumeN(t, channel(t, c), q, 1); string(d[0].Body) != q {
		t.Fatalf("consumed %q", d[0].Body)
	}
	pts := h.rec.points()
	if n := len(with(pts, "direction:out", "topic:"+missing)); n != 0 {
		t.Errorf("%d publish checkpoints for the returned message, want 0", n)
	}
	if n := len(with(pts, "direction:out", "topic:"+q)); n != 1 {
		t.Errorf("%d publish checkpoints for the routed message, want 1", n)
	}
}
