package amqp

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/internal/testpki"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// nextBlocking waits for a Connection.Blocked or Unblocked notification.
func nextBlocking(t *testing.T, name string, c <-chan amqp091.Blocking) amqp091.Blocking {
	t.Helper()
	select {
	case b := <-c:
		return b
	case <-time.After(60 * time.Second):
		t.Fatalf("%s: no Connection.Blocked/Unblocked within 60 s", name)
		return amqp091.Blocking{}
	}
}

// TestMemoryAlarmBlocksThroughTheProxy: a real memory alarm on the private node blocks a
// publisher through the proxy exactly as it blocks one connected directly: the broker's
// Connection.Blocked, with its reason, and Connection.Unblocked reach the client; the message
// published while blocked is confirmed once the alarm clears and arrives with its header.
func TestMemoryAlarmBlocksThroughTheProxy(t *testing.T) {
	n := needPrivateRabbit(t)
	h := startProxy(t, func(c *Config) { c.Upstream = n.addr })

	type publisher struct {
		name    string
		ch      *amqp091.Channel
		blocks  <-chan amqp091.Blocking
		confirm <-chan amqp091.Confirmation
		queue   string
	}
	var pubs []publisher
	for _, p := range []struct{ name, url string }{{"direct", "amqp://guest:guest@" + n.addr + "/"}, {"proxied", h.url}} {
		c := dial(t, p.url, "blocked-"+p.name, 0)
		ch := channel(t, c)
		q, err := ch.QueueDeclare(unique("blocked-"+p.name), false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		pubs = append(pubs, publisher{p.name, ch, c.NotifyBlocked(make(chan amqp091.Blocking, 4)),
			ch.NotifyPublish(make(chan amqp091.Confirmation, 4)), q.Name})
	}
	// Registered after the connections, so it runs before their Close, which a blocked broker
	// would not answer.
	t.Cleanup(func() { n.ctl(t, "set_vm_memory_high_watermark", "0.4") })
	publish := func(p publisher, body string) {
		t.Helper()
		if err := p.ch.PublishWithContext(context.Background(), "", p.queue, false, false, amqp091.Publishing{Body: []byte(body)}); err != nil {
			t.Fatalf("%s: publish %s: %v", p.name, body, err)
		}
	}
	confirmed := func(p publisher, tag uint64) {
		t.Helper()
		select {
		case c := <-p.confirm:
			if c != (amqp091.Confirmation{DeliveryTag: tag, Ack: true}) {
				t.Fatalf("%s: confirmation %+v, want ack of %d", p.name, c, tag)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("%s: delivery tag %d not confirmed", p.name, tag)
		}
	}
	for _, p := range pubs {
		publish(p, "before")
		confirmed(p, 1)
	}

	n.ctl(t, "set_vm_memory_high_watermark", "0")
	var reasons []string
	for _, p := range pubs {
		publish(p, "during") // the broker blocks a connection when it next publishes
		b := nextBlocking(t, p.name, p.blocks)
		if !b.Active {
			t.Fatalf("%s: first notification %+v is not Blocked", p.name, b)
		}
		reasons = append(reasons, b.Reason)
	}
	if reasons[0] != reasons[1] || !strings.Contains(reasons[1], "memory") {
		t.Errorf("Blocked reasons direct %q, proxied %q", reasons[0], reasons[1])
	}

	n.ctl(t, "set_vm_memory_high_watermark", "0.4")
	for _, p := range pubs {
		if b := nextBlocking(t, p.name, p.blocks); b.Active {
			t.Fatalf("%s: %+v after the alarm cleared, want Unblocked", p.name, b)
		}
		confirmed(p, 2)
	}

	proxied := pubs[1]
	for i, d := range consumeN(t, proxied.ch, proxied.queue, 2) {
		if want := []string{"before", "during"}[i]; string(d.Body) != want || d.Headers[pathway.HeaderKey] == nil {
			t.Errorf("delivery %d: body %q, headers %v", i, d.Body, d.Headers)
		}
	}
	if st := h.p.Stats(); st.Injected != 2 || st.DecodeErrors != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestUpstreamTLSToRabbit: the proxy originates TLS to RabbitMQ's own TLS listener, verifying the
// broker's certificate, and a plain client publishes and consumes through it with checkpoints
// that chain; a proxy that does not trust the broker's CA lets no client through.
func TestUpstreamTLSToRabbit(t *testing.T) {
	n := needPrivateRabbit(t)
	dialVia := func(pki *testpki.PKI) func(*Config) {
		caFile := pki.WriteCA(t, t.TempDir())
		r, _, err := proxy.ClientTLS(proxy.TLSFiles{CAFile: caFile})
		if err != nil {
			t.Fatal(err)
		}
		return func(c *Config) {
			c.Upstream = n.tlsAddr
			c.Listener.Dial = r.DialFunc((&net.Dialer{}).DialContext)
		}
	}

	t.Run("trusted", func(t *testing.T) {
		h := startProxy(t, dialVia(n.ca))
		c := dial(t, h.url, "over-tls", 0)
		ch := channel(t, c)
		q, err := ch.QueueDeclare(unique("tls-up"), false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1))
		if err := ch.PublishWithContext(context.Background(), "", q.Name, false, false, amqp091.Publishing{Body: []byte("over tls")}); err != nil {
			t.Fatal(err)
		}
		if c := <-confirms; !c.Ack {
			t.Fatalf("confirmation %+v", c)
		}
		d := consumeN(t, ch, q.Name, 1)[0]
		if string(d.Body) != "over tls" || d.Headers[pathway.HeaderKey] == nil {
			t.Errorf("body %q, headers %v", d.Body, d.Headers)
		}
		waitFor(t, "consume point", func() bool { return len(with(h.rec.points(), "direction:in")) == 1 })
		out := with(h.rec.points(), "direction:out", "topic:"+q.Name)
		in := with(h.rec.points(), "direction:in", "topic:"+q.Name)
		if len(out) != 1 || len(in) != 1 || in[0].ParentHash != out[0].Hash {
			t.Errorf("points out %+v, in %+v: the consume does not chain to the publish", out, in)
		}
	})

	t.Run("untrusted", func(t *testing.T) {
		var logs syncbuf.Buffer
		via := dialVia(testpki.New(t, "some other CA"))
		h := startProxy(t, func(c *Config) { via(c); c.Log = zerolog.New(&logs) })
		c, err := amqp091.DialConfig(h.url, amqp091.Config{Dial: amqp091.DefaultDial(10 * time.Second)})
		if err == nil {
			c.Close()
			t.Fatal("a client got through a proxy that cannot verify the broker")
		}
		// Refused for the reason under test: the broker's certificate, not a dial that failed.
		waitFor(t, "the proxy's dial failure", func() bool { return strings.Contains(logs.String(), "upstream dial failed") })
		if !strings.Contains(logs.String(), "certificate signed by unknown authority") {
			t.Errorf("the upstream dial failed for another reason:\n%s", logs.String())
		}
	})
}
