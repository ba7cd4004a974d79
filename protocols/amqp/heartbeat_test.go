package amqp

import (
	"context"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TestLiveHeartbeatsKeepAnIdleConnection: a client and RabbitMQ that agreed on 2 s heartbeats
// and send nothing else for 11 s keep their connection through a proxy whose idle timeout is 5 s:
// the heartbeats cross it both ways and count as traffic, and the connection then publishes and
// consumes as before. With 30 s heartbeats the proxy closes it as idle. (2 s, not 1 s: RabbitMQ
// gives up on a client after two missed intervals, which a loaded machine could stall through.)
// TestHeartbeatsAndBlockedPassThrough checks the frames offline.
func TestLiveHeartbeatsKeepAnIdleConnection(t *testing.T) {
	h := startProxy(t, func(c *Config) { c.Listener.IdleTimeout = 5 * time.Second })
	cfg := amqp091.Config{Properties: amqp091.Table{"connection_name": "quiet"}, Heartbeat: 2 * time.Second}
	c, err := amqp091.DialConfig(h.url, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	closed := c.NotifyClose(make(chan *amqp091.Error, 1))
	q := declareQueue(t, c, unique("heartbeat"))
	select {
	case err := <-closed:
		t.Fatalf("the connection closed while idle: %v", err)
	case <-time.After(11 * time.Second): // twice the proxy's idle timeout, and more
	}
	ch := channel(t, c)
	if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("after the quiet")}); err != nil {
		t.Fatal(err)
	}
	if d := consumeN(t, ch, q, 1)[0]; string(d.Body) != "after the quiet" {
		t.Errorf("got %q", d.Body)
	}
}
