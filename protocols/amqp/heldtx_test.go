package amqp

import (
	"context"
	"fmt"
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
	held := func(n int64) func() bool { return func() bool { return h.p.heldTx.Used() == n } }
	points := func() int { return len(with(h.rec.points(), "direction:out", "topic:"+q, "type:rabbitmq")) }

	ch := txChannel(c)
	publish(ch, 5)
	waitFor(t, "5 publishes read, 3 held", func() bool { return h.p.Stats().Published == 5 })
	if got, unheld, early := h.p.heldTx.Used(), h.p.Stats().TxUnheld, points(); got != 3 || unheld != 2 || early != 2 {
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

// TestConsumerTagsBounded: all connections together remember at most maxConsumerTags consumer
// tags; a consumer past it is counted (Stats.UntrackedConsumers) and its deliveries count as
// UnknownQueue. CancelOks, channel closes and connection ends give the room back.
func TestConsumerTagsBounded(t *testing.T) {
	defer func(old int64) { maxConsumerTags = old }(maxConsumerTags)
	maxConsumerTags = 3
	h := startProxy(t, nil)
	c := dial(t, h.url, "tags-bounded", 0)
	q1 := declareQueue(t, c, unique("tags1"))
	q2 := declareQueue(t, c, unique("tags2"))
	tags := func(n int64) func() bool { return func() bool { return h.p.tags.Used() == n } }
	consume := func(ch *amqp091.Channel, q, tag string) <-chan amqp091.Delivery {
		t.Helper()
		ds, err := ch.Consume(q, tag, true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		return ds
	}

	ch := channel(t, c)
	for i := range 3 {
		consume(ch, q1, fmt.Sprintf("tracked-%d", i))
	}
	over := consume(ch, q2, "untracked")
	waitFor(t, "3 tags remembered, 1 not", func() bool { return h.p.tags.Used() == 3 && h.p.Stats().UntrackedConsumers == 1 })
	pub := channel(t, c)
	if err := pub.PublishWithContext(context.Background(), "", q2, false, false, amqp091.Publishing{Body: []byte("m")}); err != nil {
		t.Fatal(err)
	}
	<-over
	waitFor(t, "the untracked consumer's delivery to count as UnknownQueue", func() bool { return h.p.Stats().UnknownQueue == 1 })

	if err := ch.Cancel("tracked-0", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the CancelOk to free a tag", tags(2))
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the channel close to free its tags", tags(0))

	c2 := dial(t, h.url, "tags-bounded-2", 0)
	ch2 := channel(t, c2)
	consume(ch2, q1, "a")
	consume(ch2, q1, "b")
	waitFor(t, "2 tags", tags(2))
	c2.Close()
	waitFor(t, "the connection's end to free its tags", tags(0))
}
