package amqp

import (
	"context"
	"errors"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/dsmproxy/dsmproxy/pathway"
)

// dialOneChannel opens an amqp091-go connection through url that negotiates channel_max 1. Its
// channel allocator then hands out channel 1 every time, so each new channel reuses the number
// of the one closed before it (with the default channel_max it would move on to 2, 3, ...).
func dialOneChannel(t *testing.T, url, name string) *amqp091.Connection {
	t.Helper()
	c, err := amqp091.DialConfig(url, amqp091.Config{
		Properties: amqp091.Table{"connection_name": name}, ChannelMax: 1, Heartbeat: 10 * time.Second})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	if c.Config.ChannelMax != 1 {
		t.Fatalf("channel_max %d negotiated, want 1", c.Config.ChannelMax)
	}
	return c
}

func publishTo(t *testing.T, ch *amqp091.Channel, q, body string) {
	t.Helper()
	if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte(body)}); err != nil {
		t.Fatal(err)
	}
}

func receive(t *testing.T, ds <-chan amqp091.Delivery, what string) {
	t.Helper()
	select {
	case _, ok := <-ds:
		if !ok {
			t.Fatalf("%s: the consumer ended", what)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: nothing delivered", what)
	}
}

// checkConsumed waits for one consume point per queue in want and fails unless each names its
// queue, and none is on an unknown one.
func checkConsumed(t *testing.T, h *harness, want ...string) {
	t.Helper()
	waitFor(t, "the consume points", func() bool { return len(with(h.rec.points(), "direction:in")) >= len(want) })
	time.Sleep(100 * time.Millisecond) // a stray late point would show
	pts := with(h.rec.points(), "direction:in")
	unknown := h.p.Stats().UnknownQueue
	ok := len(pts) == len(want) && unknown == 0
	for _, q := range want {
		ok = ok && len(with(pts, "topic:"+q)) == 1
	}
	if !ok {
		var got [][]string
		for _, p := range pts {
			got = append(got, p.EdgeTags)
		}
		t.Errorf("consume points %v (%d on an unknown queue), want one on each of %v", got, unknown, want)
	}
}

// TestReusedChannelNumber: a client may open a channel under the number of one it closed. The new
// channel starts empty: its deliveries and gets count (the old one's Close made the proxy treat
// deliveries as discarded until the CloseOk), and a consumer tag used again names the queue the
// new channel consumes from, whatever the old channel did with it.
func TestReusedChannelNumber(t *testing.T) {
	t.Run("consume", func(t *testing.T) {
		// With room for two tags per channel, any tag the old channel left behind would fill the
		// map, and a full map is started again: the live consumer would lose its queue.
		h := startProxy(t, func(c *Config) { c.MaxConsumers = 2 })
		dc := dial(t, directURL, "setup", 0)
		a, b, live := declareQueue(t, dc, unique("reuse-a")), declareQueue(t, dc, unique("reuse-b")), declareQueue(t, dc, unique("reuse-live"))
		pub := channel(t, dc)
		c := dialOneChannel(t, h.url, "reuser")

		ch := channel(t, c)
		ds, err := ch.Consume(a, "T", true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		publishTo(t, pub, a, "from a")
		receive(t, ds, "queue a")
		if err := ch.Close(); err != nil {
			t.Fatal(err)
		}

		ch = channel(t, c) // channel 1 again
		liveDs, err := ch.Consume(live, "live", true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if ds, err = ch.Consume(b, "T", true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		publishTo(t, pub, b, "from b")
		publishTo(t, pub, live, "live")
		receive(t, ds, "queue b")
		receive(t, liveDs, "the live queue")
		checkConsumed(t, h, a, b, live)
	})

	t.Run("get", func(t *testing.T) {
		h := startProxy(t, nil)
		dc := dial(t, directURL, "setup", 0)
		a, b := declareQueue(t, dc, unique("reuse-get-a")), declareQueue(t, dc, unique("reuse-get-b"))
		pub := channel(t, dc)
		publishTo(t, pub, a, "from a")
		publishTo(t, pub, b, "from b")
		c := dialOneChannel(t, h.url, "getter")
		get := func(ch *amqp091.Channel, q string) {
			t.Helper()
			waitFor(t, "a message from "+q, func() bool {
				_, ok, err := ch.Get(q, true)
				if err != nil {
					t.Fatal(err)
				}
				return ok
			})
		}

		ch := channel(t, c)
		get(ch, a)
		if err := ch.Close(); err != nil {
			t.Fatal(err)
		}
		get(channel(t, c), b) // channel 1 again
		checkConsumed(t, h, a, b)
	})

	t.Run("refused consume", func(t *testing.T) {
		// The broker closes the channel instead of answering the Consume: no ConsumeOk ever
		// takes that pending Consume, and the next channel's ConsumeOk must not either.
		h := startProxy(t, nil)
		dc := dial(t, directURL, "setup", 0)
		b := declareQueue(t, dc, unique("reuse-b"))
		pub := channel(t, dc)
		c := dialOneChannel(t, h.url, "refused")
		missing := unique("no-such-queue")

		var amqpErr *amqp091.Error
		if _, err := channel(t, c).Consume(missing, "T", true, false, false, false, nil); !errors.As(err, &amqpErr) || amqpErr.Code != 404 {
			t.Fatalf("consume from a missing queue: %v, want NOT_FOUND", err)
		}
		ds, err := channel(t, c).Consume(b, "T", true, false, false, false, nil) // channel 1 again
		if err != nil {
			t.Fatal(err)
		}
		publishTo(t, pub, b, "from b")
		receive(t, ds, "queue b")
		checkConsumed(t, h, b)
	})

	t.Run("consume crossing the broker's close", func(t *testing.T) {
		// An asynchronous client may send a Consume before it reads the broker's Channel.Close:
		// the proxy takes it in after the Close, and the broker discards it. The client's
		// CloseOk and the next Channel.Open must drop it, or it takes the next ConsumeOk.
		h := startProxy(t, nil)
		dc := dial(t, directURL, "setup", 0)
		crossed, b := declareQueue(t, dc, unique("crossed")), declareQueue(t, dc, unique("reuse-b"))
		consume := func(q string) []byte {
			return appendFrame(nil, frameMethod, 1, method(60, 20, u16b(0), sstr(q), sstr("T"), []byte{0x02}, lstr(nil))) // no-ack
		}
		rc := rawDial(t, h.p.Addr().String())
		rc.send(appendFrame(nil, frameMethod, 1, method(60, 70, u16b(0), sstr(unique("no-such-queue")), []byte{1})))
		rc.expect(chanClose)
		rc.send(consume(crossed), appendFrame(nil, frameMethod, 1, method(20, 41)))
		rc.send(appendFrame(nil, frameMethod, 1, method(20, 10, sstr("")))) // channel 1 again
		rc.expect(mid(20, 11))
		rc.send(consume(b))
		rc.expect(basicConsOk)
		publishTo(t, channel(t, dc), b, "from b")
		rc.expect(basicDeliver)
		checkConsumed(t, h, b)
	})
}

// TestBrokerCancelFreesTheTag: RabbitMQ cancels a consumer whose queue is deleted (Basic.Cancel
// to a client that advertised consumer_cancel_notify, as amqp091-go does; RabbitMQ 3.x does not
// advertise accept_consumer_cancel_ok, so no CancelOk follows). The tag is free again: consuming
// under it names the new queue, and the cancelled consumer no longer takes room in the channel's
// bounded map, where it would make the proxy start the map again and lose the live consumer.
func TestBrokerCancelFreesTheTag(t *testing.T) {
	h := startProxy(t, func(c *Config) { c.MaxConsumers = 2 })
	dc := dial(t, directURL, "setup", 0)
	a, b, live := declareQueue(t, dc, unique("cancel-a")), declareQueue(t, dc, unique("cancel-b")), declareQueue(t, dc, unique("cancel-live"))
	admin := channel(t, dc)
	c := dial(t, h.url, "cancelled", 0)
	ch := channel(t, c)
	cancels := ch.NotifyCancel(make(chan string, 1))
	liveDs, err := ch.Consume(live, "live", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	aDs, err := ch.Consume(a, "T", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.QueueDelete(a, false, false, false); err != nil {
		t.Fatal(err)
	}
	select {
	case tag := <-cancels:
		if tag != "T" {
			t.Fatalf("the broker cancelled %q", tag)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no Basic.Cancel from the broker")
	}
	for range aDs { // closed once amqp091-go has dropped the consumer
	}

	bDs, err := ch.Consume(b, "T", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	publishTo(t, admin, b, "from b")
	publishTo(t, admin, live, "live")
	receive(t, bDs, "queue b")
	receive(t, liveDs, "the live queue")
	checkConsumed(t, h, b, live)
}

// TestReopenedChannelForgetsItsDeclaredQueue: an empty queue name means the queue last declared
// on the channel; on a new channel under the same number nothing has been declared, and RabbitMQ
// refuses a Get of "" (404 "no previously declared queue"). The refusal must not name the queue
// the closed channel declared.
func TestReopenedChannelForgetsItsDeclaredQueue(t *testing.T) {
	h := startProxy(t, nil)
	c := dialOneChannel(t, h.url, "forgetful")
	ch := channel(t, c)
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	var amqpErr *amqp091.Error
	if _, _, err := channel(t, c).Get("", true); !errors.As(err, &amqpErr) || amqpErr.Code != 404 { // channel 1 again
		t.Fatalf("Get(\"\") on a new channel: %v, want NOT_FOUND", err)
	}
	want := pathway.Edge{Direction: pathway.In, Type: pathway.TypeRabbitMQ}
	var got []pathway.Edge
	waitFor(t, "the refusal event", func() bool {
		got = got[:0]
		for _, e := range h.errs.events() {
			if e.Operation == "Basic.Get" && e.Code == 404 {
				got = append(got, e.Edge)
			}
		}
		return len(got) > 0
	})
	if len(got) != 1 || got[0] != want {
		t.Errorf("refused Get events on %v, want one on %v (not on %s, declared by the closed channel)", got, want, q.Name)
	}
}

// TestReopenedChannelPublishMode: transactions and confirms are modes of a channel; a new one
// under the same number starts in neither. Publishes on it count when sent (a proxy still in Tx
// mode would hold them for a commit that never comes), and once it selects confirms itself, a
// nack names its queue.
func TestReopenedChannelPublishMode(t *testing.T) {
	t.Run("tx, closed by the client", func(t *testing.T) {
		h := startProxy(t, nil)
		dc := dial(t, directURL, "setup", 0)
		q := declareQueue(t, dc, unique("tx-reuse"))
		c := dialOneChannel(t, h.url, "tx-reuser")
		ch := channel(t, c)
		if err := ch.Tx(); err != nil {
			t.Fatal(err)
		}
		publishTo(t, ch, q, "uncommitted")
		if err := ch.Close(); err != nil { // the broker rolls the transaction back
			t.Fatal(err)
		}
		publishTo(t, channel(t, c), q, "plain") // channel 1 again
		if d := consumeN(t, channel(t, dc), q, 1); string(d[0].Body) != "plain" {
			t.Fatalf("consumed %q", d[0].Body)
		}
		waitFor(t, "a publish point", func() bool { return len(with(h.rec.points(), "direction:out")) > 0 })
		if n := len(with(h.rec.points(), "direction:out", "topic:"+q)); n != 1 {
			t.Errorf("%d publish points, want 1 (the publish outside a transaction)", n)
		}
	})

	t.Run("confirm, closed by the broker", func(t *testing.T) {
		h := startProxy(t, nil)
		c := dialOneChannel(t, h.url, "confirm-reuser")
		ch := channel(t, c)
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ch.Get(unique("no-such-queue"), true); err == nil {
			t.Fatal("Get from a missing queue succeeded")
		}
		ch = channel(t, c) // channel 1 again
		q, err := ch.QueueDeclare(unique("rejecting"), false, true, true, false, amqp091.Table{"x-max-length": int32(0), "x-overflow": "reject-publish"})
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1))
		publishTo(t, ch, q.Name, "rejected")
		if cf := <-confirms; cf.Ack {
			t.Fatal("the publish to a full reject-publish queue was acked")
		}
		var nacks []pathway.Edge
		waitFor(t, "the NACK event", func() bool {
			nacks = nacks[:0]
			for _, e := range h.errs.events() {
				if e.Name == "NACK" {
					nacks = append(nacks, e.Edge)
				}
			}
			return len(nacks) > 0
		})
		if want := *publishEdge("", q.Name); len(nacks) != 1 || nacks[0] != want {
			t.Errorf("NACK events on %v, want one on %v", nacks, want)
		}
	})
}
