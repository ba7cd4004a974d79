package amqp

import (
	"context"
	"testing"

	"github.com/rabbitmq/amqp091-go"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
)

// TestConfirmedPublishesCount: on a confirm channel a publish counts as produced once RabbitMQ
// acks it, never when it nacks it or closes the channel over it; what a client's own Channel.Close
// leaves unconfirmed counts. Against RabbitMQ with amqp091-go.
func TestConfirmedPublishesCount(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "confirms", 0)
	setup := dial(t, directURL, "confirms-setup", 0)
	ctx := context.Background()
	confirmChannel := func() (*amqp091.Channel, chan amqp091.Confirmation) {
		t.Helper()
		ch := channel(t, c)
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		return ch, ch.NotifyPublish(make(chan amqp091.Confirmation, 10000))
	}
	points := func(tags ...string) int {
		return len(with(h.rec.points(), append([]string{"direction:out"}, tags...)...))
	}
	lost := func(name string) (n int) {
		for _, e := range h.errs.events() {
			if e.Category == errtrack.LostMessage && e.Name == name {
				n += e.Messages
			}
		}
		return n
	}

	t.Run("nacked", func(t *testing.T) {
		full := unique("confirm-full")
		sc := channel(t, setup)
		if _, err := sc.QueueDeclare(full, false, true, false, false, amqp091.Table{"x-max-length": int32(0), "x-overflow": "reject-publish"}); err != nil {
			t.Fatal(err)
		}
		ch, confirms := confirmChannel()
		for range 3 {
			if err := ch.PublishWithContext(ctx, "", full, false, false, amqp091.Publishing{Body: []byte("no room")}); err != nil {
				t.Fatal(err)
			}
		}
		for range 3 {
			if c := <-confirms; c.Ack {
				t.Fatalf("RabbitMQ acked a publish to a full reject-publish queue: %+v", c)
			}
		}
		waitFor(t, "the nacks reported", func() bool { return lost("NACK") == 3 })
		if n := points("topic:" + full); n != 0 {
			t.Errorf("%d nacked publishes counted as produced", n)
		}
		ch.Close()
	})

	t.Run("channel closed by the broker", func(t *testing.T) {
		ghost := unique("confirm-ghost")
		ch, _ := confirmChannel()
		closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
		if err := ch.PublishWithContext(ctx, ghost, "k", false, false, amqp091.Publishing{Body: []byte("nowhere")}); err != nil {
			t.Fatal(err)
		}
		if e := <-closed; e == nil || e.Code != amqp091.NotFound {
			t.Fatalf("channel closed with %v, want 404", e)
		}
		waitFor(t, "the refused publish counted unconfirmed", func() bool { return h.p.Stats().Unconfirmed == 1 })
		if n := points("exchange:" + ghost); n != 0 {
			t.Errorf("a publish to a missing exchange counted as produced %d times", n)
		}
		if n := lost("NOT_FOUND"); n != 1 {
			t.Errorf("%d lost messages for the 404, want 1", n)
		}
	})

	t.Run("closed by the client before every ack", func(t *testing.T) {
		q := declareQueue(t, setup, unique("confirm-close"))
		ch, _ := confirmChannel()
		const n = 3000
		for range n {
			if err := ch.PublishWithContext(ctx, "", q, false, false, amqp091.Publishing{Body: make([]byte, 512)}); err != nil {
				t.Fatal(err)
			}
		}
		before := h.p.Stats().Unconfirmed
		if err := ch.Close(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "every publish counted", func() bool { return points("topic:"+q) == n })
		if got := h.p.Stats().Unconfirmed; got != before {
			t.Errorf("Unconfirmed went from %d to %d: a client's own close left publishes uncounted", before, got)
		}
	})
	waitFor(t, "no room held", func() bool { return h.p.heldConfirms.Used() == 0 })
}

// TestHeldConfirmsBounded: past maxHeldConfirms held in all, a confirm-mode publish counts when
// sent (Stats.ConfirmUnheld); the others still wait for their acks.
func TestHeldConfirmsBounded(t *testing.T) {
	defer func(old int64) { maxHeldConfirms = old }(maxHeldConfirms)
	maxHeldConfirms = 2
	h := startProxy(t, nil)
	c := dial(t, h.url, "confirms-bounded", 0)
	q := declareQueue(t, c, unique("confirm-bounded"))
	ch := channel(t, c)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	var dcs []*amqp091.DeferredConfirmation
	for range 10 {
		dc, err := ch.PublishWithDeferredConfirmWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("m")})
		if err != nil {
			t.Fatal(err)
		}
		dcs = append(dcs, dc)
	}
	for _, dc := range dcs {
		if !dc.Wait() {
			t.Fatal("nacked")
		}
	}
	waitFor(t, "all 10 counted", func() bool { return len(with(h.rec.points(), "direction:out", "topic:"+q)) == 10 })
	if st := h.p.Stats(); st.ConfirmUnheld < 8 || st.ConfirmUnheld > 10 {
		t.Errorf("ConfirmUnheld %d, want 8 or more of 10 with room for 2", st.ConfirmUnheld)
	}
	waitFor(t, "no room held", func() bool { return h.p.heldConfirms.Used() == 0 })
}
