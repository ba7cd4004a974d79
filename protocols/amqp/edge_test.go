package amqp

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/aggregator"
	"github.com/dsmproxy/dsmproxy/internal/agenttest"
	"github.com/dsmproxy/dsmproxy/internal/syncbuf"
	"github.com/dsmproxy/dsmproxy/internal/testpki"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

func consumeN(t *testing.T, ch *amqp091.Channel, q string, n int) []amqp091.Delivery {
	t.Helper()
	ds, err := ch.Consume(q, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []amqp091.Delivery
	for len(out) < n {
		select {
		case d := <-ds:
			out = append(out, d)
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d delivered from %s", len(out), n, q)
		}
	}
	return out
}

// TestInjectionKeepsSmallFramesSmall: the broker passes a content header frame on as it is, and
// a consumer may have negotiated frame_max 4096 (the minimum; Node's amqplib asks for it) while
// the publisher has 128 KiB. A header frame that fitted 4096 bytes stays unmodified rather than
// outgrow them (such a consumer lost its connection on it); one already bigger is limited by the
// publisher's frame_max alone.
func TestInjectionKeepsSmallFramesSmall(t *testing.T) {
	h := startProxy(t, nil)
	pub := dial(t, h.url, "publisher", 131072)
	small, big := declareQueue(t, pub, unique("min-frame")), declareQueue(t, pub, unique("big-frame"))
	ch := channel(t, pub)
	// 3900 and 4020 leave the header frame under 4096 bytes, 4200 over.
	publishPadded(t, ch, small, 3900, 4020)
	publishPadded(t, ch, big, 4200)
	got := consumeN(t, channel(t, dial(t, directURL, "node-like-consumer", 4096)), small, 2)
	checkPadded(t, got, true, false)
	if d := consumeN(t, channel(t, dial(t, directURL, "consumer", 0)), big, 1)[0]; d.Headers[pathway.HeaderKey] == nil {
		t.Errorf("a header frame already over 4096 bytes did not get the pathway header")
	}
	if st := h.p.Stats(); st.SkippedFrameMax != 1 || st.Injected != 2 {
		t.Errorf("stats %+v; want 1 skipped and 2 injected", st)
	}
}

// publishPadded publishes one message to q per pad, each with a header entry of that many bytes.
// Its content header frame is 35 bytes plus the pad: 8 of frame, 14 of class, weight, size and
// flags, 13 of table.
func publishPadded(t *testing.T, ch *amqp091.Channel, q string, pads ...int) {
	t.Helper()
	for _, pad := range pads {
		hdr := amqp091.Table{"pad": strings.Repeat("p", pad)}
		if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Headers: hdr, Body: []byte("b")}); err != nil {
			t.Fatal(err)
		}
	}
}

// checkPadded: the i-th delivery carries its pad and a pathway header exactly when want[i].
func checkPadded(t *testing.T, ds []amqp091.Delivery, want ...bool) {
	t.Helper()
	for i, w := range want {
		pad, _ := ds[i].Headers["pad"].(string) // none: the consumer lost its connection
		if _, has := ds[i].Headers[pathway.HeaderKey]; has != w || pad == "" {
			t.Errorf("message %d (pad %d): pathway header %v, want %v", i, len(pad), has, w)
		}
	}
}

// TestNegotiatedFrameMaxSkipsInjection: a publisher's frame_max from Connection.TuneOk bounds
// the header frame even above 4096 bytes: at 8192, a header frame of 8155 bytes, which the entry
// would take past it, goes unmodified (RabbitMQ would close the connection with FRAME_ERROR), and
// a smaller one over 4096 bytes still gets the entry.
func TestNegotiatedFrameMaxSkipsInjection(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "frame-8192", 8192)
	q := declareQueue(t, c, unique("framemax8k"))
	ch := channel(t, c)
	publishPadded(t, ch, q, 8120, 5000)
	checkPadded(t, consumeN(t, ch, q, 2), false, true)
	if st := h.p.Stats(); st.SkippedFrameMax != 1 || st.Injected != 1 {
		t.Errorf("stats %+v; want 1 skipped and 1 injected", st)
	}
	found := false
	for _, e := range h.errs.events() {
		found = found || e.Name == "frame_max" && strings.Contains(e.Message, "frame_max 8192")
	}
	if !found {
		t.Errorf("no frame_max event naming 8192: %+v", h.errs.events())
	}
	if err := c.Close(); err != nil {
		t.Errorf("the publisher's connection did not close cleanly: %v", err)
	}
}

// TestDeliveryFitsConsumerFrameMax: a consumer may have negotiated a frame_max between 4096 and
// the publisher's. A header frame of 8155 bytes fits a consumer's 8192, but not with the entry
// the proxy added at the publish (amqp091-go closed the connection on it: "frame size exceeds
// negotiated frame_max"). Delivered through the proxy, the entry comes out again, so the consumer
// gets what it would get direct, and its consume is still checkpointed with the publish as parent.
func TestDeliveryFitsConsumerFrameMax(t *testing.T) {
	h := startProxy(t, nil)
	pub := dial(t, h.url, "publisher", 131072)
	q := declareQueue(t, pub, unique("consumer-frame-8k"))
	publishPadded(t, channel(t, pub), q, 8120, 5000)
	con := dial(t, h.url, "consumer-8k", 8192)
	checkPadded(t, consumeN(t, channel(t, con), q, 2), false, true)
	if err := con.Close(); err != nil {
		t.Errorf("the consumer's connection did not close cleanly: %v", err)
	}
	waitFor(t, "two consume points", func() bool { return len(with(h.rec.points(), "direction:in")) == 2 })
	// Sizes as the consumer got them: body plus pad entry, the pathway entry only where it stayed.
	want := map[int64]bool{1 + 9 + 8120: true, 1 + 9 + 5000 + int64(ctxEntryLen(pathway.Base64Len)): true}
	for _, p := range with(h.rec.points(), "direction:in") {
		if p.ParentHash == 0 {
			t.Errorf("consume point %+v has no parent: the stripped entry was not read", p)
		}
		if !want[p.PayloadSize] {
			t.Errorf("consume point of %d bytes; want one of %v", p.PayloadSize, want)
		}
	}
	found := false
	for _, e := range h.errs.events() {
		found = found || e.Name == "frame_max" && e.Operation == "Basic.Deliver" && strings.Contains(e.Message, "frame_max 8192")
	}
	if !found {
		t.Errorf("no Basic.Deliver frame_max event naming 8192: %+v", h.errs.events())
	}
}

// TestFrameMaxSkipsInjection: with frame_max 4096, a message whose content header would outgrow
// the frame goes through unmodified (the broker would close the connection otherwise), and the
// stream stays in step for the next message, which gets its header.
func TestFrameMaxSkipsInjection(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "big-headers", 4096)
	q := declareQueue(t, c, unique("framemax"))
	ch := channel(t, c)
	pad := strings.Repeat("p", 4040) // payload 27+4040: fits 4096 alone, not with the 55-byte entry
	ctx := context.Background()
	if err := ch.PublishWithContext(ctx, "", q, false, false, amqp091.Publishing{Headers: amqp091.Table{"pad": pad}, Body: []byte("big")}); err != nil {
		t.Fatal(err)
	}
	if err := ch.PublishWithContext(ctx, "", q, false, false, amqp091.Publishing{Body: []byte("small")}); err != nil {
		t.Fatal(err)
	}
	ds := consumeN(t, ch, q, 2)
	big, small := ds[0], ds[1]
	if string(big.Body) != "big" || big.Headers["pad"] != pad || big.Headers[pathway.HeaderKey] != nil {
		t.Errorf("oversized message changed: body %q, %d headers", big.Body, len(big.Headers))
	}
	if string(small.Body) != "small" || small.Headers[pathway.HeaderKey] == nil {
		t.Errorf("next message: body %q headers %v", small.Body, small.Headers)
	}
	if st := h.p.Stats(); st.SkippedFrameMax != 1 || st.Injected != 1 {
		t.Errorf("stats %+v", st)
	}
	var found bool
	for _, e := range h.errs.events() {
		found = found || e.Name == "frame_max"
	}
	if !found {
		t.Errorf("no frame_max skip event: %+v", h.errs.events())
	}
	// Sizes as the consumer sees them: body plus headers table entries (name, type, length,
	// value), the pathway entry only where it was added.
	val, _ := small.Headers[pathway.HeaderKey].(string)
	sizes := []int64{int64(len(big.Body) + 1 + len("pad") + 1 + 4 + len(pad)), int64(len(small.Body) + ctxEntryLen(len(val)))}
	waitFor(t, "two publish points", func() bool { return len(with(h.rec.points(), "direction:out")) == 2 })
	pts := with(h.rec.points(), "direction:out")
	slices.SortFunc(pts, func(a, b pathway.Point) int { return cmp.Compare(b.PayloadSize, a.PayloadSize) })
	for i, pt := range pts {
		if pt.PayloadSize != sizes[i] {
			t.Errorf("publish point %d: payload size %d, want %d", i, pt.PayloadSize, sizes[i])
		}
	}
	if err := c.Close(); err != nil {
		t.Errorf("connection after the skipped message: %v", err)
	}
}

// TestEmptyQueueNamesAndNowait: Consume and Get with an empty queue name mean the queue last
// declared on the channel (here server-named), and a nowait Consume keeps the client's tag.
func TestEmptyQueueNamesAndNowait(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "nowait", 0)
	ch := channel(t, c)
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, b := range []string{"one", "two"} {
		if err := ch.PublishWithContext(ctx, "", q.Name, false, false, amqp091.Publishing{Body: []byte(b)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "two messages queued", func() bool {
		qi, err := ch.QueueDeclarePassive(q.Name, false, true, true, false, nil)
		return err == nil && qi.Messages == 2
	})
	if d, ok, err := ch.Get("", true); err != nil || !ok || string(d.Body) != "one" {
		t.Fatalf("Get(\"\"): %q %v %v", d.Body, ok, err)
	}
	ds, err := ch.Consume("", "my-tag", true, false, false, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-ds:
		if string(d.Body) != "two" {
			t.Errorf("consumed %q", d.Body)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nothing consumed")
	}
	waitFor(t, "two consume points", func() bool { return len(with(h.rec.points(), "direction:in")) == 2 })
	if got := with(h.rec.points(), "direction:in", "topic:"+q.Name); len(got) != 2 {
		t.Errorf("consume points on %s: %d of %v", q.Name, len(got), h.rec.points())
	}
	if st := h.p.Stats(); st.UnknownQueue != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestChannelErrorReported: a publish to a missing exchange closes the channel with 404; the
// event names the exchange and the failed method.
func TestChannelErrorReported(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "errors", 0)
	ch := channel(t, c)
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	missing := unique("no-such-exchange")
	ch.PublishWithContext(context.Background(), missing, "k", false, false, amqp091.Publishing{Body: []byte("x")})
	select {
	case e := <-closed:
		if e == nil || e.Code != 404 {
			t.Fatalf("channel close %v", e)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("channel not closed")
	}
	waitFor(t, "NOT_FOUND event", func() bool {
		for _, e := range h.errs.events() {
			if e.Name == "NOT_FOUND" && e.Code == 404 && e.Operation == "Basic.Publish" && e.Edge.Exchange == missing {
				return true
			}
		}
		return false
	})
	// The connection still works.
	ch2 := channel(t, c)
	if _, err := ch2.QueueDeclare("", false, true, true, false, nil); err != nil {
		t.Errorf("after channel error: %v", err)
	}
}

// TestOtherProtocolHeaderRefused: AMQP 1.0 (and anything but 0-9-1) gets the 0-9-1 header back
// and the connection closes, as RabbitMQ itself answers.
func TestOtherProtocolHeaderRefused(t *testing.T) {
	h := startProxy(t, nil)
	for _, hdr := range []string{"AMQP\x00\x01\x00\x00", "AMQP\x03\x01\x00\x00", "GET / HT"} {
		c, err := net.Dial("tcp", h.p.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(hdr))
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != string(protocolHeader[:]) {
			t.Errorf("%q: answered %q, %v", hdr, got, err)
		}
	}
	if st := h.p.Stats(); st.RefusedProtocol != 3 {
		t.Errorf("stats %+v", st)
	}
}

// startBareProxy starts a proxy with no observer in front of the local RabbitMQ; the test shuts
// it down itself.
func startBareProxy(t *testing.T) *Proxy {
	t.Helper()
	needRabbit(t)
	p, err := New(Config{Listen: "127.0.0.1:0", Upstream: rabbitAddr, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestShutdownClosesIdleConnection: Shutdown drains a connected idle client without waiting for
// its context to end, and the client is told as RabbitMQ tells it when it stops: a
// server-initiated Connection.Close 320 (CONNECTION_FORCED), not a dropped socket.
func TestShutdownClosesIdleConnection(t *testing.T) {
	p := startBareProxy(t)
	c, err := amqp091.Dial("amqp://guest:guest@" + p.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	closed := c.NotifyClose(make(chan *amqp091.Error, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	select {
	case err := <-closed:
		if err == nil || err.Code != amqp091.ConnectionForced || !err.Server {
			t.Errorf("the client saw %v, want a server-initiated close 320", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("client not told its connection ended")
	}
}

// directQueue declares a fresh auto-delete queue named from prefix on a direct connection to
// RabbitMQ, deleted when the test ends; the channel serves to check what the queue holds.
func directQueue(t *testing.T, prefix string) (*amqp091.Channel, amqp091.Queue) {
	t.Helper()
	direct := channel(t, dial(t, directURL, prefix+"-check", 0))
	q, err := direct.QueueDeclare(fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()), false, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { direct.QueueDelete(q.Name, false, false, false) })
	return direct, q
}

// TestShutdownDeliversConfirms: a publisher with confirms that is publishing when the proxy
// drains gets the confirm of every message the broker took before the connection ends: the proxy
// closes the broker side with Connection.Close and relays what comes before its CloseOk. (Closing
// the socket lost those confirms, and the publisher sent again messages the queue held.)
func TestShutdownDeliversConfirms(t *testing.T) {
	p := startBareProxy(t)
	direct, q := directQueue(t, "drain-confirms")
	c := dial(t, "amqp://guest:guest@"+p.Addr().String()+"/", "confirming-publisher", 0)
	ch := channel(t, c)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 100000))
	closed := c.NotifyClose(make(chan *amqp091.Error, 1))
	stop := make(chan struct{})
	sent := make(chan int, 1)
	go func() {
		n := 0
		defer func() { sent <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if ch.PublishWithContext(context.Background(), "", q.Name, false, false, amqp091.Publishing{Body: []byte("m")}) != nil {
				return
			}
			n++
		}
	}()
	waitFor(t, "publishes to flow", func() bool {
		st, err := direct.QueueDeclarePassive(q.Name, false, true, false, false, nil)
		return err == nil && st.Messages > 200
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	<-closed
	close(stop)
	<-sent
	acked := 0
	for done := false; !done; {
		select {
		case cf, ok := <-confirms:
			if !ok {
				done = true
			} else if cf.Ack {
				acked++
			}
		case <-time.After(time.Second):
			done = true
		}
	}
	st, err := direct.QueueDeclarePassive(q.Name, false, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != acked {
		t.Errorf("the queue holds %d messages, the publisher got %d confirms", st.Messages, acked)
	}
}

// TestRefusedLoginIsLogged: RabbitMQ closes the socket on a refused login (amqp091-go does not ask
// for a Connection.Close instead); the proxy's log says the login was refused, not "connection
// reset by peer", and the client gets its 403 as directly.
func TestRefusedLoginIsLogged(t *testing.T) {
	var logs syncbuf.Buffer
	h := startProxy(t, func(cfg *Config) { cfg.Log = zerolog.New(&logs) })
	_, err := amqp091.Dial("amqp://guest:wrong@" + h.p.Addr().String() + "/")
	var ae *amqp091.Error
	if !errors.As(err, &ae) || ae.Code != amqp091.AccessRefused {
		t.Fatalf("dial with a wrong password: %v, want 403 ACCESS_REFUSED", err)
	}
	waitFor(t, "the refusal in the log", func() bool {
		return strings.Contains(logs.String(), "it refused the credentials")
	})
}

// tee hands points to the recorder and the aggregator.
type tee struct {
	rec *recorder
	agg *aggregator.Aggregator
}

func (t tee) Add(p pathway.Point) bool     { t.rec.Add(p); return t.agg.Add(p) }
func (t tee) Offset(o pathway.Offset) bool { return t.agg.Offset(o) }

// TestDSMThroughAgent: publish and consume through the proxy reach the (strictly decoding) fake
// Datadog Agent through the real aggregator and flusher, chained, with their services and tags.
func TestDSMThroughAgent(t *testing.T) {
	agent := agenttest.New(t)
	agg := aggregator.New(aggregator.Config{Env: "test", DefaultService: "dsmproxy"})
	agg.Start()
	t.Cleanup(agg.Close)
	sink, err := aggregator.NewAgentSink(aggregator.AgentConfig{URL: agent.URL(), Env: "test", TracerVersion: "dsmproxy-test", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	flusher := aggregator.NewFlusher(agg, 10*time.Second, zerolog.Nop(), sink)
	rec := &recorder{}
	h := startProxy(t, func(c *Config) { c.Observer = tee{rec, agg} })
	pub, con := dial(t, h.url, "orders-api", 0), dial(t, h.url, "billing", 0)
	q := declareQueue(t, pub, unique("dsm-agent"))
	ex := unique("dsm-agent-x")
	declareExchange(t, pub, ex, "direct", q, "rk")
	ch := channel(t, pub)
	for _, b := range []string{"a", "b", "c"} {
		if err := ch.PublishWithContext(context.Background(), ex, "rk", false, false, amqp091.Publishing{Body: []byte(b)}); err != nil {
			t.Fatal(err)
		}
	}
	cch := channel(t, con)
	ds, err := cch.Consume(q, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		select {
		case <-ds:
		case <-time.After(30 * time.Second):
			t.Fatal("not consumed")
		}
	}
	waitFor(t, "three consume points", func() bool { return len(with(rec.points(), "direction:in")) == 3 })
	fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	flusher.FlushNow(fctx, true)
	agent.CheckHop(t, 30*time.Second, "orders-api", "billing", 3,
		[]string{"direction:out", "exchange:" + ex, "has_routing_key:true", "type:rabbitmq"},
		[]string{"direction:in", "topic:" + q, "type:rabbitmq"})
}

// TestAmqpsTerminated: the listener terminates TLS (amqps) toward the client and the message
// still gets its header.
func TestAmqpsTerminated(t *testing.T) {
	srvTLS, pool := testpki.ServerTLS(t)
	h := startProxy(t, func(c *Config) { c.Listener.TLS = srvTLS })
	c, err := amqp091.DialTLS("amqps://guest:guest@"+h.p.Addr().String()+"/", &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := declareQueue(t, c, unique("amqps"))
	ch := channel(t, c)
	if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("tls")}); err != nil {
		t.Fatal(err)
	}
	d := consumeN(t, ch, q, 1)[0]
	if string(d.Body) != "tls" || d.Headers[pathway.HeaderKey] == nil {
		t.Errorf("over amqps: body %q headers %v", d.Body, d.Headers)
	}
}

// TestHeartbeatsAndBlockedPassThrough: heartbeats and Connection.Blocked/Unblocked from the broker
// reach the client byte for byte.
func TestHeartbeatsAndBlockedPassThrough(t *testing.T) {
	blocked := appendFrame(nil, frameMethod, 0, append([]byte{0, 10, 0, 60}, sstr("low on memory")...))
	stream := appendFrame(nil, frameHeartbeat, 0, nil)
	stream = append(stream, blocked...)
	stream = appendFrame(stream, frameMethod, 0, []byte{0, 10, 0, 61})
	stream = appendFrame(stream, frameHeartbeat, 0, nil)
	for name, run := range map[string]func(*session, *connReader, *connWriter) error{
		"from broker": (*session).fromBroker, "from client": (*session).fromClient,
	} {
		s := offlineSession(t, nil)
		var out bytes.Buffer
		w := newConnWriter(&out)
		if err := run(s, newConnReader(bytes.NewReader(stream), nil), w); err != io.EOF {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(out.Bytes(), stream) {
			t.Errorf("%s: %x became %x", name, stream, out.Bytes())
		}
	}
}

// TestNackReported: a queue that rejects publishes when full makes the broker nack; the client
// gets the same confirmations as directly and the event names the queue the publish went to.
func TestNackReported(t *testing.T) {
	for _, named := range []bool{false, true} {
		t.Run(fmt.Sprint("named exchange ", named), func(t *testing.T) {
			h := startProxy(t, nil)
			c := dial(t, h.url, "nacked", 0)
			ch := channel(t, c)
			q, err := ch.QueueDeclare(unique("full"), false, true, true, false, amqp091.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"})
			if err != nil {
				t.Fatal(err)
			}
			// The event names where the publish went: the queue for the default exchange, the
			// exchange (and whether a routing key was given) for a named one.
			exchange, key := "", q.Name
			want := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeRabbitMQ, Topic: q.Name}
			if named {
				exchange, key = unique("nack-ex"), "k"
				if err := ch.ExchangeDeclare(exchange, "direct", false, true, false, false, nil); err != nil {
					t.Fatal(err)
				}
				if err := ch.QueueBind(q.Name, key, exchange, false, nil); err != nil {
					t.Fatal(err)
				}
				want = pathway.Edge{Direction: pathway.Out, Type: pathway.TypeRabbitMQ, Exchange: exchange, HasRoutingKey: pathway.RoutingKeyTrue}
			}
			ch.Confirm(false)
			confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 4))
			for range 2 {
				if err := ch.PublishWithContext(context.Background(), exchange, key, false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
					t.Fatal(err)
				}
			}
			var got []amqp091.Confirmation
			for range 2 {
				got = append(got, <-confirms)
			}
			if got[0] != (amqp091.Confirmation{DeliveryTag: 1, Ack: true}) || got[1] != (amqp091.Confirmation{DeliveryTag: 2, Ack: false}) {
				t.Errorf("confirmations %+v", got)
			}
			waitFor(t, "NACK event", func() bool {
				for _, e := range h.errs.events() {
					if e.Name == "NACK" {
						return true
					}
				}
				return false
			})
			for _, e := range h.errs.events() {
				if e.Name == "NACK" && e.Edge != want {
					t.Errorf("NACK event on %v, want %v", e.Edge, want)
				}
			}
			if st := h.p.Stats(); st.Nacks != 1 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestServiceFromUserRule: a configured rule on the AMQP user names the service when the client
// sends no connection_name.
func TestServiceFromUserRule(t *testing.T) {
	h := startProxy(t, func(c *Config) {
		c.Services = &proxy.Services{Default: "default-svc", Rules: []proxy.ServiceRule{{Service: "guest-app", Protocol: "amqp", User: "guest"}}}
	})
	c, err := amqp091.Dial(h.url) // no connection_name
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := declareQueue(t, c, unique("rule"))
	ch := channel(t, c)
	if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("r")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "publish point", func() bool { return len(with(h.rec.points(), "direction:out")) == 1 })
	if p := with(h.rec.points(), "direction:out")[0]; p.Service != "guest-app" {
		t.Errorf("service %q, want the rule's", p.Service)
	}
}

// TestDeliveriesAfterCancelKeepTheirQueue: the broker may deliver any number of messages between a
// client's Basic.Cancel and its CancelOk (AMQP 0-9-1, basic.cancel); those are consumed from the
// consumer's queue and checkpointed on it, not on an unknown one.
func TestDeliveriesAfterCancelKeepTheirQueue(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "cancel", 0)
	ch := channel(t, c)
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	ctx := context.Background()
	for i := 0; i < n; i++ {
		if err := ch.PublishWithContext(ctx, "", q.Name, false, false, amqp091.Publishing{Body: []byte("m")}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "messages queued", func() bool {
		qi, err := ch.QueueDeclarePassive(q.Name, false, true, true, false, nil)
		return err == nil && qi.Messages == n
	})
	// Auto-ack and no prefetch limit: RabbitMQ streams deliveries as fast as it can, so many are
	// on the wire when the cancel goes out.
	ds, err := ch.Consume(q.Name, "cancelled", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	<-ds
	if err := ch.Cancel("cancelled", false); err != nil {
		t.Fatal(err)
	}
	got := 1
	for range ds { // closed after CancelOk
		got++
	}
	waitFor(t, "a consume point per delivery", func() bool { return len(with(h.rec.points(), "direction:in")) == got })
	if on := with(h.rec.points(), "direction:in", "topic:"+q.Name); len(on) != got {
		t.Errorf("%d of %d consume points on %s", len(on), got, q.Name)
	}
	if st := h.p.Stats(); st.UnknownQueue != 0 {
		t.Errorf("%d deliveries on an unknown queue (of %d delivered before CancelOk)", st.UnknownQueue, got)
	}
	t.Logf("%d deliveries before CancelOk", got)
}

// TestNowaitDeclareNamesTheQueue: after a no-wait Queue.Declare (no DeclareOk comes back), a Get
// with an empty queue name reads the queue just declared, and its checkpoint names it.
func TestNowaitDeclareNamesTheQueue(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "nowait-declare", 0)
	ch := channel(t, c)
	name := fmt.Sprintf("nowait-declare-%d", time.Now().UnixNano())
	if _, err := ch.QueueDeclare(name, false, true, true, true, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.PublishWithContext(context.Background(), "", name, false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	var got bool
	waitFor(t, "the message", func() bool {
		_, ok, err := ch.Get("", true)
		if err != nil {
			t.Fatal(err)
		}
		got = got || ok
		return got
	})
	waitFor(t, "a consume point", func() bool { return len(with(h.rec.points(), "direction:in")) == 1 })
	if on := with(h.rec.points(), "direction:in", "topic:"+name); len(on) != 1 {
		t.Errorf("consume point not on %s: %v", name, h.rec.points())
	}
}

// frameGate is a client connection that, once armed (at a frame boundary), holds back its writes
// from the end of the next body frame on until opened, so a publish stops between two of its
// body frames.
type frameGate struct {
	net.Conn
	mu     sync.Mutex
	stream []byte // bytes written since arming, from the first frame not yet whole
	armed  bool
	held   chan struct{} // closed when a write is held at the boundary
	open   chan struct{}
}

func (g *frameGate) Write(p []byte) (int, error) {
	g.mu.Lock()
	if !g.armed {
		g.mu.Unlock()
		return g.Conn.Write(p)
	}
	cut := -1
	g.stream = append(g.stream, p...)
	at := 0
	for at+7 <= len(g.stream) {
		size := int(binary.BigEndian.Uint32(g.stream[at+3:]))
		end := at + 7 + size + 1
		if end > len(g.stream) {
			break
		}
		if g.stream[at] == 3 { // body frame
			cut = end - (len(g.stream) - len(p))
			break
		}
		at = end
	}
	if cut < 0 {
		g.stream = g.stream[at:]
		g.mu.Unlock()
		return g.Conn.Write(p)
	}
	g.armed = false
	g.mu.Unlock()
	n, err := g.Conn.Write(p[:cut])
	if err != nil {
		return n, err
	}
	close(g.held)
	<-g.open
	m, err := g.Conn.Write(p[cut:])
	return n + m, err
}

// TestShutdownWaitsForTheBody: a drain that starts while a publish is between two body frames
// closes the connection only after the last one, so RabbitMQ gets the whole message.
func TestShutdownWaitsForTheBody(t *testing.T) {
	p := startBareProxy(t)
	direct, q := directQueue(t, "drain-mid-body")

	gate := &frameGate{held: make(chan struct{}), open: make(chan struct{})}
	c, err := amqp091.DialConfig("amqp://guest:guest@"+p.Addr().String()+"/", amqp091.Config{
		FrameSize: 4096, // a 64 KiB body in 16 frames
		Dial: func(network, addr string) (net.Conn, error) {
			nc, err := net.Dial(network, addr)
			gate.Conn = nc
			return gate, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ch := channel(t, c)
	gate.mu.Lock()
	gate.armed = true
	gate.mu.Unlock()
	body := bytes.Repeat([]byte("b"), 64<<10)
	published := make(chan error, 1)
	go func() {
		published <- ch.PublishWithContext(context.Background(), "", q.Name, false, false, amqp091.Publishing{Body: body})
	}()
	<-gate.held
	// The proxy may not have read the publish's first frames yet when the drain starts: what the
	// kernel holds for it counts as begun too.
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shut <- p.Shutdown(ctx)
	}()
	// Wait until the proxy has seen the drain and stopped at the body-frame boundary (or, with the
	// defect, closed the connection there); then let the rest of the body go.
	waitFor(t, "the drain to reach the connection", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.closed
	})
	// Give the drain watcher time to wake the client reader. Should it come later, the proxy reads
	// the rest of the body first and the test passes either way: the pause only lets it catch a
	// drain that does not wait.
	time.Sleep(100 * time.Millisecond)
	close(gate.open)
	<-published
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	var got []byte
	waitFor(t, "the message in the queue", func() bool {
		d, ok, err := direct.Get(q.Name, true)
		if err != nil {
			t.Fatal(err)
		}
		got = d.Body
		return ok
	})
	if len(got) != len(body) {
		t.Errorf("RabbitMQ got a %d-byte body, want %d", len(got), len(body))
	}
}

// TestPublishesAfterBrokerChannelCloseKeepTheConnection: a confirm-mode channel the broker closes
// (a publish to a missing exchange) while more publishes are on their way loses only itself: the
// connection and its other channels go on.
func TestPublishesAfterBrokerChannelCloseKeepTheConnection(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "pipelined", 0)
	doomed := channel(t, c)
	if err := doomed.Confirm(false); err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("p"), 1024)
	ctx := context.Background()
	for i := 0; i < 5000; i++ { // pipelined: many are written before the broker's Close comes back
		if err := doomed.PublishWithContext(ctx, "no-such-exchange-for-dsmproxy", "k", false, false, amqp091.Publishing{Body: body}); err != nil {
			break
		}
	}
	other := channel(t, c)
	if err := other.Confirm(false); err != nil {
		t.Fatalf("a new channel on the same connection: %v", err)
	}
	q, err := other.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatalf("the connection did not survive: %v", err)
	}
	conf, err := other.PublishWithDeferredConfirmWithContext(ctx, "", q.Name, false, false, amqp091.Publishing{Body: []byte("ok")})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := conf.WaitContext(ctx); err != nil || !ok {
		t.Fatalf("publish on the other channel: acked %v, %v", ok, err)
	}
}

// TestRefusalsNameTheirQueueOrExchange: RabbitMQ closes a channel (404) for a consume, a get or
// a passive declare of a queue or exchange that does not exist, and refuses a connection to a
// vhost that does not exist (530). Each becomes a broker error event naming the method the
// broker refused and the queue or exchange it concerned.
func TestRefusalsNameTheirQueueOrExchange(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "refused", 0)
	q, ex := unique("no-such-queue"), unique("no-such-exchange")
	for _, tc := range []struct {
		op   string
		do   func(*amqp091.Channel) error
		edge pathway.Edge
	}{
		{"Basic.Consume", func(ch *amqp091.Channel) error {
			_, err := ch.Consume(q, "", false, false, false, false, nil)
			return err
		}, pathway.Edge{Direction: pathway.In, Type: pathway.TypeRabbitMQ, Topic: q}},
		{"Basic.Get", func(ch *amqp091.Channel) error {
			_, _, err := ch.Get(q, false)
			return err
		}, pathway.Edge{Direction: pathway.In, Type: pathway.TypeRabbitMQ, Topic: q}},
		{"Queue.Declare", func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
			return err
		}, pathway.Edge{Type: pathway.TypeRabbitMQ, Topic: q}},
		{"Exchange.Declare", func(ch *amqp091.Channel) error {
			return ch.ExchangeDeclarePassive(ex, "direct", false, false, false, false, nil)
		}, pathway.Edge{Type: pathway.TypeRabbitMQ, Exchange: ex}},
		// The default exchange cannot be declared (403); a queue declared before on the
		// channel has nothing to do with it.
		{"Exchange.Declare", func(ch *amqp091.Channel) error {
			if _, err := ch.QueueDeclare("", false, true, true, false, nil); err != nil {
				return err
			}
			return ch.ExchangeDeclare("", "direct", false, false, false, false, nil)
		}, pathway.Edge{Type: pathway.TypeRabbitMQ}},
	} {
		var amqpErr *amqp091.Error
		if err := tc.do(channel(t, c)); !errors.As(err, &amqpErr) || (amqpErr.Code != 404 && amqpErr.Code != 403) {
			t.Fatalf("%s: %v, want NOT_FOUND or ACCESS_REFUSED", tc.op, err)
		}
		code := amqpErr.Code
		waitFor(t, tc.op+" refusal event", func() bool {
			for _, e := range h.errs.events() {
				if e.Operation == tc.op && e.Code == int32(code) && e.Edge == tc.edge && e.Service == "refused" {
					return true
				}
			}
			return false
		})
	}

	vhost := unique("no-such-vhost")
	if _, err := amqp091.Dial(strings.TrimSuffix(h.url, "/") + "/" + vhost); err == nil {
		t.Fatal("RabbitMQ accepted a vhost that does not exist")
	}
	waitFor(t, "Connection.Open refusal event", func() bool {
		for _, e := range h.errs.events() {
			if e.Operation == "Connection.Open" && e.Code == 530 && e.Name == "NOT_ALLOWED" && strings.Contains(e.Message, "Connection.Close") {
				return true
			}
		}
		return false
	})
}

// TestChannelFlowMatchesDirect: Channel.Flow passes through untouched, so a client gets what
// RabbitMQ answers, through the proxy as directly: RabbitMQ accepts active=true and goes on,
// and refuses active=false (NOT_IMPLEMENTED, which closes the connection).
func TestChannelFlowMatchesDirect(t *testing.T) {
	h := startProxy(t, nil)
	flow := func(url string) []string {
		var out []string
		for _, active := range []bool{true, false} {
			c := dial(t, url, "flow", 0)
			err := channel(t, c).Flow(active)
			var amqpErr *amqp091.Error
			if errors.As(err, &amqpErr) {
				out = append(out, fmt.Sprintf("flow %v: %d", active, amqpErr.Code))
			} else {
				out = append(out, fmt.Sprintf("flow %v: %v", active, err))
			}
			if ch, err := c.Channel(); err != nil {
				out = append(out, "then: "+err.Error())
			} else if _, err := ch.QueueDeclare("", false, true, true, false, nil); err != nil {
				out = append(out, "then: "+err.Error())
			}
		}
		return out
	}
	direct, proxied := flow("amqp://guest:guest@"+rabbitAddr+"/"), flow(h.url)
	t.Logf("direct: %q", direct)
	if !slices.Equal(direct, proxied) {
		t.Errorf("through the proxy %q, directly %q", proxied, direct)
	}
	waitFor(t, "the refusal of Channel.Flow as an event", func() bool {
		for _, e := range h.errs.events() {
			if e.Operation == "Channel.Flow" && e.Code == 540 && strings.Contains(e.Message, "broker sent Connection.Close") {
				return true
			}
		}
		return false
	})
}

// TestSilentClientDoesNotHoldTheDrain: a client that connected and never sent the protocol
// header is closed by a graceful shutdown at once, not at its deadline.
func TestSilentClientDoesNotHoldTheDrain(t *testing.T) {
	p := startBareProxy(t)
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, "the proxy to serve the connection", func() bool { return p.Stats().Connections == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v (a silent client held the drain)", err)
	}
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("read %d bytes from a connection the drain should have closed", n)
	}
}

// fullQueue is a queue holding n messages, published directly.
func fullQueue(t *testing.T, n int) string {
	t.Helper()
	dc := dial(t, "amqp://guest:guest@"+rabbitAddr+"/", "filler", 0)
	q := declareQueue(t, dc, unique("full"))
	ch := channel(t, dc)
	for range n {
		if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("m")}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the messages queued", func() bool {
		qi, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
		return err == nil && qi.Messages == n
	})
	return q
}

// TestDeliveriesWhileAChannelCloses: RabbitMQ keeps delivering until it answers a client's
// Channel.Close or a no-wait Basic.Cancel takes effect. Deliveries after a no-wait Cancel still
// name their queue; those after the client's Close, which the client discards (and RabbitMQ
// requeues), are not checkpointed as consumed, and none is counted on an unknown queue.
func TestDeliveriesWhileAChannelCloses(t *testing.T) {
	for _, nowaitCancel := range []bool{false, true} {
		t.Run(fmt.Sprint("nowait cancel ", nowaitCancel), func(t *testing.T) {
			h := startProxy(t, nil)
			q := fullQueue(t, 2000)
			c := dial(t, h.url, "closer", 0)
			ch := channel(t, c)
			ds, err := ch.Consume(q, "c1", true, false, false, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			<-ds
			if nowaitCancel {
				if err := ch.Cancel("c1", true); err != nil {
					t.Fatal(err)
				}
			}
			// Close returns at CloseOk, which the proxy relays after every delivery before it.
			if err := ch.Close(); err != nil {
				t.Fatal(err)
			}
			st := h.p.Stats()
			if st.UnknownQueue != 0 {
				t.Errorf("%d deliveries counted on an unknown queue", st.UnknownQueue)
			}
			for _, pt := range with(h.rec.points(), "direction:in") {
				if !slices.Contains(pt.EdgeTags, "topic:"+q) {
					t.Fatalf("consume checkpoint %v does not name the queue", pt.EdgeTags)
				}
			}
			if st.Consumed == 0 {
				t.Error("nothing consumed")
			}
		})
	}
}

// TestMultipleNackCountsEveryPublish: RabbitMQ merges nacks (multiple=true); every publish a
// nack covers is a lost message, on its own edge, as many as the client sees nacked.
func TestMultipleNackCountsEveryPublish(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "nack-many", 0)
	ch := channel(t, c)
	q, err := ch.QueueDeclare(unique("rejecting"), false, true, true, false, amqp091.Table{"x-max-length": int32(0), "x-overflow": "reject-publish"})
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	const n = 500
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, n))
	for range n {
		if err := ch.PublishWithContext(context.Background(), "", q.Name, false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	nacked := 0
	for range n {
		if cf := <-confirms; !cf.Ack {
			nacked++
		}
	}
	lost := 0
	for _, e := range h.errs.events() {
		if e.Name == "NACK" {
			if e.Edge.Topic != q.Name {
				t.Errorf("nack on edge %v, want the queue %s", e.Edge, q.Name)
			}
			lost += int(e.Messages)
		}
	}
	if lost != nacked || nacked == 0 {
		t.Errorf("%d lost messages reported, the client saw %d nacked (in %d Nack frames)", lost, nacked, h.p.Stats().Nacks)
	}
}

// TestRepublishedReturnKeepsThePathway: a mandatory publish RabbitMQ cannot route comes back
// (Basic.Return) with the header the proxy added; the client's usual retry publishes it again
// with those headers. That context is the proxy's own, not a tracer's: the second publish is
// checkpointed with the first as parent and carries a new context, not the returned one.
func TestRepublishedReturnKeepsThePathway(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "retrier", 0)
	q := declareQueue(t, c, unique("retry-target"))
	ch := channel(t, c)
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	missing := unique("no-route")
	if err := ch.PublishWithContext(context.Background(), "", missing, true, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	var r amqp091.Return
	select {
	case r = <-returns:
	case <-time.After(time.Minute):
		t.Fatal("no Basic.Return")
	}
	returned, _ := r.Headers[pathway.HeaderKey].(string)
	if returned == "" {
		t.Fatalf("returned headers %v: no pathway context", r.Headers)
	}
	if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Headers: r.Headers, Body: r.Body}); err != nil {
		t.Fatal(err)
	}
	d := consumeN(t, ch, q, 1)[0]
	got, _ := d.Headers[pathway.HeaderKey].(string)
	if got == "" || got == returned || len(d.Headers) != 1 {
		t.Errorf("republished message headers %v: want one new context, not the returned %q", d.Headers, returned)
	}
	first := with(h.rec.points(), "direction:out", "topic:"+missing, "type:rabbitmq")
	second := with(h.rec.points(), "direction:out", "topic:"+q, "type:rabbitmq")
	if len(first) != 1 || len(second) != 1 || second[0].ParentHash != first[0].Hash {
		t.Errorf("publish checkpoints %+v then %+v: want the republish to have the first as parent", first, second)
	}
}

// TestTransactionalPublishes: in a channel in Tx mode, publishes count when their transaction
// commits; rolled back ones never reach the queue and are not checkpointed.
func TestTransactionalPublishes(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "tx-publisher", 0)
	q := declareQueue(t, c, unique("tx"))
	ch := channel(t, c)
	if err := ch.Tx(); err != nil {
		t.Fatal(err)
	}
	publish := func(body string) {
		if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	publish("rolled back 1")
	publish("rolled back 2")
	if err := ch.TxRollback(); err != nil {
		t.Fatal(err)
	}
	publish("committed")
	if err := ch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	if d := consumeN(t, channel(t, c), q, 1); string(d[0].Body) != "committed" {
		t.Fatalf("consumed %q", d[0].Body)
	}
	if n := len(with(h.rec.points(), "direction:out", "topic:"+q, "type:rabbitmq")); n != 1 {
		t.Errorf("%d publish checkpoints, want 1 (the committed publish)", n)
	}
}

// TestUnconfirmed: publishes confirmed one by one count as confirmed however many there were
// (a drain waited its whole confirm time after 1024 single confirms), and one still tracked and
// unconfirmed does not.
func TestUnconfirmed(t *testing.T) {
	for _, tc := range []struct {
		name         string
		seq, settled uint64
		pending      []uint64 // tags still in the ring
		unconfirmed  bool
	}{
		{"none in confirm mode", 0, 0, nil, false},
		{"all acked one by one, fewer than the ring", 100, 0, nil, false},
		{"all acked one by one, more than the ring", pubRingSize + 10, 0, nil, false},
		{"the latest unconfirmed", pubRingSize + 10, 0, []uint64{pubRingSize + 10}, true},
		{"settled by a multiple ack", 50, 50, nil, false},
		{"one after a multiple ack", 51, 50, []uint64{51}, true},
	} {
		s := &session{shared: map[uint16]*chanShared{}}
		cs := &chanShared{seq: tc.seq, settled: tc.settled, pubRing: make([]*pathway.Edge, pubRingSize)}
		for _, k := range tc.pending {
			cs.pubRing[k%pubRingSize] = &pathway.Edge{Type: pathway.TypeRabbitMQ}
		}
		s.shared[1] = cs
		if got := s.unconfirmed(); got != tc.unconfirmed {
			t.Errorf("%s: unconfirmed = %v, want %v", tc.name, got, tc.unconfirmed)
		}
	}
}
