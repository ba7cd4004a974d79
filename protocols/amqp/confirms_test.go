package amqp

import (
	"context"
	"testing"

	"github.com/rabbitmq/amqp091-go"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
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
		t.Cleanup(func() {
			cleanupBroker(t, func(ch *amqp091.Channel) error { _, err := ch.QueueDelete(full, false, false, false); return err })
		})
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

	// The refused publish is known lost (a lost message), not of unknown fate: it is not
	// Unconfirmed, which would count it twice. The channel's next-to-last one, not acked when
	// the close came, is.
	t.Run("channel closed by the broker", func(t *testing.T) {
		ghost := unique("confirm-ghost")
		q := declareQueue(t, setup, unique("confirm-ghost-q"))
		ch, _ := confirmChannel()
		before := h.p.Stats().Unconfirmed
		closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
		// Stored: it counts as produced or, if its ack had not come before the close, as
		// Unconfirmed.
		if err := ch.PublishWithContext(ctx, "", q, false, false, amqp091.Publishing{Body: []byte("stored")}); err != nil {
			t.Fatal(err)
		}
		if err := ch.PublishWithContext(ctx, ghost, "k", false, false, amqp091.Publishing{Body: []byte("nowhere")}); err != nil {
			t.Fatal(err)
		}
		if e := <-closed; e == nil || e.Code != amqp091.NotFound {
			t.Fatalf("channel closed with %v, want 404", e)
		}
		waitFor(t, "the refused publish reported lost", func() bool { return lost("NOT_FOUND") == 1 })
		waitFor(t, "the channel forgotten", func() bool { return h.p.heldConfirms.Used() == 0 })
		settled := points("topic:"+q) + int(h.p.Stats().Unconfirmed-before)
		if settled != 1 || h.p.Stats().Unconfirmed-before > 1 {
			t.Errorf("the stored publish: %d produce points, %d more Unconfirmed; want one of them, and the refused publish in neither",
				points("topic:"+q), h.p.Stats().Unconfirmed-before)
		}
		if n := points("exchange:" + ghost); n != 0 {
			t.Errorf("a publish to a missing exchange counted as produced %d times", n)
		}
	})

	t.Run("connection closed by the broker over a publish", func(t *testing.T) {
		q := declareQueue(t, setup, unique("confirm-immediate"))
		cc := dial(t, h.url, "confirms-immediate", 0)
		ch := channel(t, cc)
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		before := h.p.Stats().Unconfirmed
		closed := cc.NotifyClose(make(chan *amqp091.Error, 1))
		// RabbitMQ closes the connection over immediate=true (540 NOT_IMPLEMENTED).
		if err := ch.PublishWithContext(ctx, "", q, false, true, amqp091.Publishing{Body: []byte("immediate")}); err != nil {
			t.Fatal(err)
		}
		if e := <-closed; e == nil || e.Code != amqp091.NotImplemented {
			t.Fatalf("connection closed with %v, want 540", e)
		}
		waitFor(t, "the refused publish reported lost", func() bool { return lost("NOT_IMPLEMENTED") == 1 })
		waitFor(t, "the connection forgotten", func() bool { return h.p.heldConfirms.Used() == 0 })
		if got := h.p.Stats().Unconfirmed; got != before {
			t.Errorf("Unconfirmed went from %d to %d: the refused publish, reported lost, counted as of unknown fate too", before, got)
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

// TestHeldConfirmsBounded: with no room left of maxHeldConfirms, a confirm-mode publish counts
// when sent (Stats.ConfirmUnheld), and none is lost. (How many of a few publishes find room
// while acks free it depends on timing, so the bound here is none at all.)
func TestHeldConfirmsBounded(t *testing.T) {
	defer func(old int64) { maxHeldConfirms = old }(maxHeldConfirms)
	maxHeldConfirms = 0
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
	if st := h.p.Stats(); st.ConfirmUnheld != 10 {
		t.Errorf("ConfirmUnheld %d, want all 10 with no room", st.ConfirmUnheld)
	}
	waitFor(t, "no room held", func() bool { return h.p.heldConfirms.Used() == 0 })
}

// TestHeldQueueGivesMemoryBack: once a burst of confirm-mode publishes is settled, the channel's
// queue does not keep its peak (each of many channels would keep its own, beyond what
// maxHeldConfirms counts), and publishes settled behind one slow to be confirmed do not count
// against the channel's maxHeldPerChannel.
func TestHeldQueueGivesMemoryBack(t *testing.T) {
	p := &Proxy{obs: &recorder{}}
	p.heldConfirms.Max = 1 << 20
	cs := &chanShared{pubRing: make([]*pathway.Edge, pubRingMin)}
	s := &session{p: p, shared: map[uint16]*chanShared{1: cs}}
	hold := func(n int) {
		t.Helper()
		for range n {
			cs.seq++
			if held, _ := s.tryHold(1, pathway.Point{Hash: cs.seq}); !held {
				t.Fatalf("publish %d not held with %d unsettled", cs.seq, cs.heldLive)
			}
		}
	}
	hold(maxHeldPerChannel)
	s.confirm(1, 1, false, false)                     // the oldest first: the rest stays behind it
	s.confirm(1, maxHeldPerChannel-1000, true, false) // all but the last 1000
	if live := cs.heldLive; live != 1000 || cap(cs.held) > 2*live {
		t.Errorf("after settling all but 1000 of %d: queue capacity %d, %d unsettled", maxHeldPerChannel, cap(cs.held), live)
	}

	// One publish left unconfirmed while the next 20,000 are: only it counts against the limit.
	s.confirm(1, 0, true, false)
	hold(1)
	slow := cs.seq
	for range 20000 / 1000 {
		hold(1000)
		for tag := cs.seq - 999; tag <= cs.seq; tag++ {
			s.confirm(1, tag, false, false)
		}
	}
	if cs.heldLive != 1 {
		t.Errorf("%d unsettled, want the slow one", cs.heldLive)
	}
	s.confirm(1, slow, false, false)
	if cs.held != nil || p.heldConfirms.Used() != 0 {
		t.Errorf("all settled: queue %d long (capacity %d), %d held in the budget", len(cs.held), cap(cs.held), p.heldConfirms.Used())
	}
	if cap(s.acked) > heldKeep {
		t.Errorf("the ack buffer kept a capacity of %d", cap(s.acked))
	}
}
