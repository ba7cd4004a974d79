package amqp

import (
	"context"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TestDrainWhileBlockedTellsTheClient: the proxy drains while a memory alarm has the private node
// block a publisher, so the broker reads nothing from the connection and never answers the
// proxy's Connection.Close. The client must still get Connection.Close 320 CONNECTION_FORCED, as
// when RabbitMQ stops (it sends that whatever the alarm), not a dropped socket (amqp091-go: 501
// EOF, a network failure).
func TestDrainWhileBlockedTellsTheClient(t *testing.T) {
	n := needPrivateRabbit(t)
	h := startProxy(t, func(c *Config) { c.Upstream = n.addr })
	c := dial(t, h.url, "drain-blocked", 0)
	closed := c.NotifyClose(make(chan *amqp091.Error, 1))
	blocks := c.NotifyBlocked(make(chan amqp091.Blocking, 4))
	ch := channel(t, c)
	q, err := ch.QueueDeclare(unique("drain-blocked"), false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.ctl(t, "set_vm_memory_high_watermark", "0.4") })
	n.ctl(t, "set_vm_memory_high_watermark", "0")
	if err := ch.PublishWithContext(context.Background(), "", q.Name, false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if b := nextBlocking(t, "proxied", blocks); !b.Active {
		t.Fatalf("%+v", b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.p.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	select {
	case e := <-closed:
		if e == nil || e.Code != 320 {
			t.Errorf("client saw %+v, want the server's Connection.Close 320 as when RabbitMQ stops", e)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the client was never told the connection closed")
	}
}
