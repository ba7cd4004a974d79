package amqp

import (
	"context"
	"testing"

	"github.com/rabbitmq/amqp091-go"
)

// TestHeldTxPublishesBounded: all connections together hold at most maxHeldTxPoints
// transactional publishes for their commits, whatever each channel may hold; past it a publish
// counts when sent (Stats.TxUnheld). Rollbacks, CommitOks, channel closes and connection ends
// each give the room back. Against RabbitMQ with amqp091-go.
func TestHeldTxPublishesBounded(t *testing.T) {
	defer func(old int64) { maxHeldTxPoints = old }(maxHeldTxPoints)
	maxHeldTxPoints = 3
	h := startProxy(t, nil)
	c := dial(t, h.url, "tx-bounded", 0)
	q := declareQueue(t, c, unique("txheld"))
	txChannel := func(c *amqp091.Connection) *amqp091.Channel {
		t.Helper()
		ch := channel(t, c)
		if err := ch.Tx(); err != nil {
			t.Fatal(err)
		}
		return ch
	}
	publish := func(ch *amqp091.Channel, n int) {
		t.Helper()
		for range n {
			if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("m")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	held := func(n int64) func() bool { return func() bool { return h.p.heldTx.Load() == n } }
	points := func() int { return len(with(h.rec.points(), "direction:out", "topic:"+q, "type:rabbitmq")) }

	ch := txChannel(c)
	publish(ch, 5)
	waitFor(t, "5 publishes read, 3 held", func() bool { return h.p.Stats().Published == 5 })
	if got, unheld, early := h.p.heldTx.Load(), h.p.Stats().TxUnheld, points(); got != 3 || unheld != 2 || early != 2 {
		t.Fatalf("held %d, TxUnheld %d, %d counted when sent; want 3, 2, 2", got, unheld, early)
	}
	if err := ch.TxRollback(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rollback to free the room", held(0))

	publish(ch, 2)
	if err := ch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the CommitOk to free the room", held(0))
	if n := points(); n != 4 {
		t.Errorf("%d publish checkpoints, want 4 (2 counted when sent past the bound, 2 committed)", n)
	}

	publish(ch, 2)
	waitFor(t, "2 held", held(2))
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the channel close to free the room", held(0))

	c2 := dial(t, h.url, "tx-bounded-2", 0)
	publish(txChannel(c2), 3)
	waitFor(t, "3 held", held(3))
	c2.Close()
	waitFor(t, "the connection's end to free the room", held(0))
	if n := points(); n != 4 {
		t.Errorf("%d publish checkpoints, want still 4: uncommitted publishes are never counted", n)
	}
}
