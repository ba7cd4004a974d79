package amqp

import (
	"context"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TestNowaitServerNamedQueueNotMistaken: a subscriber declares a queue, then a server-named
// one with no-wait, binds "" and consumes "" (both the server-named queue, RabbitMQ's last
// declared on the channel). No DeclareOk tells the proxy its name: its deliveries are
// checkpointed without a queue, not on the queue declared before it.
func TestNowaitServerNamedQueueNotMistaken(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "subscriber", 0)
	work := declareQueue(t, c, unique("work"))
	ex := unique("fanout")
	declareExchange(t, c, ex, "fanout", "", "")
	ch := channel(t, c)
	if _, err := ch.QueueDeclare(work, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("", false, true, true, true, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind("", "", ex, false, nil); err != nil {
		t.Fatal(err)
	}
	ds, err := ch.Consume("", "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := channel(t, c).PublishWithContext(context.Background(), ex, "", false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if d := <-ds; d.Exchange != ex {
		t.Fatalf("delivered from exchange %q", d.Exchange)
	}
	// The delivery was checkpointed before it was forwarded.
	in := with(h.rec.points(), "direction:in")
	if len(in) != 1 || hasTag(in[0], "topic:") != "" {
		t.Errorf("consume points %+v: want one without a queue (the server named it)", in)
	}
}
