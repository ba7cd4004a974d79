package amqp

import (
	"context"
	"slices"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	errtrack "github.com/dsmproxy/dsmproxy/errors"
	"github.com/dsmproxy/dsmproxy/pathway"
	"github.com/dsmproxy/dsmproxy/proxy"
)

// lostMessages sums the lost messages the proxy reported.
func lostMessages(h *harness) (n int) {
	for _, e := range h.errs.events() {
		if e.Category == errtrack.LostMessage {
			n += e.Messages
		}
	}
	return n
}

// rawPublish is a Basic.Publish of a one-byte message on ch, as a raw client sends it: the
// method, with bits (0x01 mandatory, 0x02 immediate), its content header and its body.
func rawPublish(ch uint16, bits byte, ex, rk string) []byte {
	return slices.Concat(
		appendFrame(nil, frameMethod, ch, method(classBasic, 40, u16b(0), sstr(ex), sstr(rk), []byte{bits})),
		appendFrame(nil, frameHeader, ch, contentPayload(1, 0)),
		appendFrame(nil, frameBody, ch, []byte("x")))
}

// TestTxChannelCloseCountsUncommitted: RabbitMQ discards a transaction's publishes with its
// channel. When it closes a Tx channel over a publish (404, a missing exchange), every publish
// since the last Tx.Commit is lost, the refused one included, and none is counted as produced;
// the committed ones are. Against RabbitMQ with amqp091-go.
func TestTxChannelCloseCountsUncommitted(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "tx-close", 0)
	q := declareQueue(t, c, unique("tx-close"))
	ch := channel(t, c)
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	if err := ch.Tx(); err != nil {
		t.Fatal(err)
	}
	publish := func(ex, rk string) {
		t.Helper()
		if err := ch.PublishWithContext(context.Background(), ex, rk, false, false, amqp091.Publishing{Body: []byte("m")}); err != nil {
			t.Fatal(err)
		}
	}
	publish("", q)
	publish("", q)
	if err := ch.TxCommit(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		publish("", q)
	}
	publish(unique("tx-no-exchange"), "k")
	if e := <-closed; e == nil || e.Code != amqp091.NotFound {
		t.Fatalf("channel closed with %v, want 404", e)
	}
	// The proxy handles a frame before relaying it: the close is reported by now.
	if n := lostMessages(h); n != 4 {
		t.Errorf("%d lost messages reported, want 4 (3 uncommitted publishes and the refused one)", n)
	}
	waitFor(t, "the uncommitted publishes released", func() bool { return h.p.heldTx.Used() == 0 })
	if n := len(with(h.rec.points(), "direction:out")); n != 2 {
		t.Errorf("%d publish checkpoints, want 2 (the committed ones)", n)
	}
}

// TestTxChannelCloseOverAnotherMethod: a Tx channel RabbitMQ closes over a method other than a
// publish (a passive declare of a missing queue) discards the uncommitted publishes all the
// same: lost, on the edge they were published to.
func TestTxChannelCloseOverAnotherMethod(t *testing.T) {
	h := startProxy(t, nil)
	c := dial(t, h.url, "tx-close-declare", 0)
	q := declareQueue(t, c, unique("tx-close-declare"))
	ch := channel(t, c)
	if err := ch.Tx(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: []byte("m")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ch.QueueDeclarePassive(unique("tx-no-queue"), false, false, false, false, nil); err == nil {
		t.Fatal("RabbitMQ declared a missing queue passively")
	}
	lost := 0
	for _, e := range h.errs.events() {
		if e.Category == errtrack.LostMessage && e.Edge.Topic == q && e.Code == amqp091.NotFound {
			lost += e.Messages
		}
	}
	if lost != 3 {
		t.Errorf("%d lost messages on %s, want 3 (the uncommitted publishes)", lost, q)
	}
	waitFor(t, "the uncommitted publishes released", func() bool { return h.p.heldTx.Used() == 0 })
	if n := len(with(h.rec.points(), "direction:out")); n != 0 {
		t.Errorf("%d publish checkpoints, want 0", n)
	}
}

// TestPublishesAfterBrokerCloseDiscarded: RabbitMQ discards what a client sends on a channel
// after its Channel.Close until the client's CloseOk. Publishes the client sent before it read
// the close reach no queue: they are lost, never produced. A transaction's publishes and its
// Tx.Commit pipelined behind the refused publish are discarded with it. A raw client, so the
// publishes after the close are sent once the proxy relayed it.
func TestPublishesAfterBrokerCloseDiscarded(t *testing.T) {
	publish := func(ex, rk string) []byte { return rawPublish(1, 0, ex, rk) }
	txCommit := appendFrame(nil, frameMethod, 1, method(classTx, 20))
	passiveDeclare := appendFrame(nil, frameMethod, 1, method(classQueue, 10, u16b(0), sstr(unique("no-queue")), []byte{0x01}, u32b(0)))
	for _, tc := range []struct {
		name              string
		mode              uint16                  // classTx or classConfirm for their Select first, 0 for none
		refused           func(q string) [][]byte // sent together; the broker closes the channel over the last publish or method
		produced, lostNow int                     // checkpoints and lost messages by the time the close is read
	}{
		{"plain", 0, func(q string) [][]byte {
			return [][]byte{publish("", q), publish("", q), publish(unique("no-exchange"), "k")}
		}, 2, 1},
		{"transaction", classTx, func(q string) [][]byte {
			return [][]byte{publish("", q), publish("", q), publish(unique("no-exchange"), "k"), txCommit}
		}, 0, 3},
		{"confirm", classConfirm, func(string) [][]byte { return [][]byte{publish(unique("no-exchange"), "k")} }, 0, 1},
		// The channel's first publish comes after a close over another method.
		{"after a refused declare", 0, func(string) [][]byte { return [][]byte{passiveDeclare} }, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startProxy(t, nil)
			q := declareQueue(t, dial(t, h.url, "setup", 0), unique("after-close"))
			rc := rawDial(t, h.p.Addr().String())
			if tc.mode != 0 {
				var noWait []byte // Confirm.Select has a no-wait bit, Tx.Select no arguments
				if tc.mode == classConfirm {
					noWait = []byte{0}
				}
				rc.send(appendFrame(nil, frameMethod, 1, method(tc.mode, 10, noWait)))
				rc.expect(mid(tc.mode, 11))
			}
			rc.send(tc.refused(q)...)
			rc.expect(chanClose)
			produced := func() int { return len(with(h.rec.points(), "direction:out", "topic:"+q)) }
			if n, lost := produced(), lostMessages(h); n != tc.produced || lost != tc.lostNow {
				t.Fatalf("at the close: %d produced, %d lost; want %d, %d", n, lost, tc.produced, tc.lostNow)
			}
			// Sent before the client read the close: the broker discards them.
			rc.send(publish("", q), publish("", q), appendFrame(nil, frameMethod, 1, method(classChannel, 41)))
			rc.send(appendFrame(nil, frameMethod, 1, method(classChannel, 10, sstr(""))))
			rc.expect(mid(classChannel, 11)) // the proxy read every frame before the Open
			if n := produced(); n != tc.produced {
				t.Errorf("%d produced, want %d: publishes the broker discarded were checkpointed", n, tc.produced)
			}
			if lost := lostMessages(h); lost != tc.lostNow+2 {
				t.Errorf("%d lost messages, want %d", lost, tc.lostNow+2)
			}
			if n := h.p.heldTx.Used(); n != 0 {
				t.Errorf("%d transactional publishes still held", n)
			}
			if d := queueDepth(t, q); d != tc.produced {
				t.Errorf("the queue holds %d messages, want %d", d, tc.produced)
			}
		})
	}
}

// TestPublishesAfterBrokerConnectionCloseDiscarded: after its Connection.Close RabbitMQ discards
// every frame but the client's CloseOk (AMQP 0-9-1 connection.close), on every channel. Publishes
// the client sent before it read the close reach no queue: lost, never produced; so are a
// transaction's uncommitted publishes. RabbitMQ closes the connection here over a declare on a
// channel never opened (504 CHANNEL_ERROR). A raw client, so the publishes after the close are
// sent once the proxy relayed it.
func TestPublishesAfterBrokerConnectionCloseDiscarded(t *testing.T) {
	publish := func(ex, rk string) []byte { return rawPublish(1, 0, ex, rk) }
	for _, tc := range []struct {
		name        string
		tx          bool
		uncommitted int // publishes of an open transaction when RabbitMQ closes the connection
	}{{"plain", false, 0}, {"transaction", true, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			h := startProxy(t, nil)
			q := declareQueue(t, dial(t, h.url, "setup", 0), unique("after-conn-close"))
			rc := rawDial(t, h.p.Addr().String())
			if tc.tx {
				rc.send(appendFrame(nil, frameMethod, 1, method(classTx, 10)))
				rc.expect(mid(classTx, 11))
				for range tc.uncommitted {
					rc.send(publish("", q))
				}
			}
			rc.send(appendFrame(nil, frameMethod, 5, method(classQueue, 10, u16b(0), sstr(q), []byte{0x01}, u32b(0))))
			rc.expect(connClose)
			rc.send(publish("", q), publish("", q), appendFrame(nil, frameMethod, 0, method(classConnection, 51)))
			if _, _, _, err := rc.next(); err == nil { // RabbitMQ closes the socket at the CloseOk
				t.Fatal("a frame after Connection.CloseOk")
			}
			if n := len(with(h.rec.points(), "direction:out", "topic:"+q)); n != 0 {
				t.Errorf("%d produced, want 0: publishes RabbitMQ discarded were checkpointed", n)
			}
			if lost := lostMessages(h); lost != tc.uncommitted+2 {
				t.Errorf("%d lost messages, want %d", lost, tc.uncommitted+2)
			}
			waitFor(t, "the connection's held publishes released", func() bool { return h.p.heldTx.Used() == 0 })
			if d := queueDepth(t, q); d != 0 {
				t.Errorf("the queue holds %d messages, want 0", d)
			}
		})
	}
}

// TestBrokerConnectionCloseOverPublishCountedOnce: RabbitMQ closes the connection (not the
// channel) over a Basic.Publish with immediate=true (540 NOT_IMPLEMENTED) or over a publish whose
// content header does not follow its method (505 UNEXPECTED_FRAME), naming basic.publish and no
// channel. On a channel in Tx mode the refused publish is one of the transaction's uncommitted
// publishes: counted with them, not once more on its own. On a channel without Tx it is counted
// on its own, beside another channel's uncommitted publishes. A raw client, to send those frames.
func TestBrokerConnectionCloseOverPublishCountedOnce(t *testing.T) {
	publish := func(ch uint16, bits byte, rk string) []byte { return rawPublish(ch, bits, "", rk) }
	const immediate = 0x02
	headerless := func(ch uint16, rk string) []byte { // the method, then another method where its content header belongs
		return slices.Concat(
			appendFrame(nil, frameMethod, ch, method(classBasic, 40, u16b(0), sstr(""), sstr(rk), []byte{0})),
			appendFrame(nil, frameMethod, ch, method(classBasic, 10, u32b(0), u16b(0), []byte{0})))
	}
	for _, tc := range []struct {
		name   string
		tx     []uint16 // channels in Tx mode
		frames func(q string) [][]byte
		code   uint16
		lost   int
		allTx  bool // every publish was in a transaction: none counts as produced
	}{
		{"immediate in a transaction", []uint16{1}, func(q string) [][]byte {
			return [][]byte{publish(1, 0, q), publish(1, immediate, q)}
		}, 540, 2, true},
		{"content header missing in a transaction", []uint16{1}, func(q string) [][]byte {
			return [][]byte{publish(1, 0, q), headerless(1, q)}
		}, 505, 2, true},
		{"immediate without a transaction", nil, func(q string) [][]byte {
			return [][]byte{publish(1, immediate, q)}
		}, 540, 1, false},
		{"immediate beside another channel's transaction", []uint16{2}, func(q string) [][]byte {
			return [][]byte{publish(2, 0, q), publish(2, 0, q), publish(1, immediate, q)}
		}, 540, 3, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startProxy(t, nil)
			q := declareQueue(t, dial(t, h.url, "setup", 0), unique("conn-close-publish"))
			rc := rawDial(t, h.p.Addr().String())
			rc.send(appendFrame(nil, frameMethod, 2, method(classChannel, 10, sstr(""))))
			rc.expect(mid(classChannel, 11))
			for _, ch := range tc.tx {
				rc.send(appendFrame(nil, frameMethod, ch, method(classTx, 10)))
				rc.expect(mid(classTx, 11))
			}
			rc.send(tc.frames(q)...)
			typ, _, m, err := rc.next()
			if err != nil || typ != frameMethod || m != connClose {
				t.Fatalf("RabbitMQ answered %d %s (%v), want Connection.Close", typ, methodName(m), err)
			}
			rc.send(appendFrame(nil, frameMethod, 0, method(classConnection, 51)))
			if _, _, _, err := rc.next(); err == nil {
				t.Fatal("a frame after Connection.CloseOk")
			}
			var closes []errtrack.Event
			for _, e := range h.errs.events() {
				if e.Category == errtrack.BrokerError && e.Operation == "Basic.Publish" {
					closes = append(closes, e)
				}
			}
			if len(closes) != 1 || closes[0].Code != int32(tc.code) {
				t.Fatalf("broker errors over Basic.Publish: %+v, want one %d", closes, tc.code)
			}
			if lost := lostMessages(h); lost != tc.lost {
				t.Errorf("%d lost messages reported, want %d", lost, tc.lost)
			}
			for _, e := range h.errs.events() {
				if e.Category == errtrack.LostMessage && e.Edge.Topic != q {
					t.Errorf("lost messages reported on edge %+v, want the publishes' topic %s", e.Edge, q)
				}
			}
			// The close is tracked where the publish it refused went, as a Channel.Close over a
			// publish is: not on a bare type:rabbitmq edge beside its lost message's.
			want := pathway.Edge{Direction: pathway.Out, Type: pathway.TypeRabbitMQ, Topic: q}
			if closes[0].Edge != want || closes[0].Messages != 1 {
				t.Errorf("the close over the publish tracked on edge %s for %d messages, want %s and 1", closes[0].Edge, closes[0].Messages, want)
			}
			if d := queueDepth(t, q); d != 0 {
				t.Errorf("the queue holds %d messages, want 0", d)
			}
			if tc.allTx {
				if n := len(with(h.rec.points(), "direction:out", "topic:"+q)); n != 0 {
					t.Errorf("%d produced, want 0", n)
				}
			}
		})
	}
}

// TestCrossingClosesAbandonTransaction: a client that closes a Tx channel itself abandons the
// publishes it has not committed, as with Tx.Rollback, even when RabbitMQ's own close, over an
// earlier method, crosses it: those are not lost. The publish RabbitMQ refused is lost all the
// same, and so are those of a Tx.Commit the client sent before its close, which RabbitMQ
// discarded; alike when RabbitMQ closes the connection (505, a content header no publish came
// before, which stops it reading at once). A raw client, so the client's close is on its way
// before the broker's is read.
func TestCrossingClosesAbandonTransaction(t *testing.T) {
	publish := func(ex, rk string) []byte { return rawPublish(1, 0, ex, rk) }
	noExchange := func() []byte { return publish(unique("no-exchange"), "k") }
	txCommit := appendFrame(nil, frameMethod, 1, method(classTx, 20))
	clientClose := appendFrame(nil, frameMethod, 1, method(classChannel, 40, u16b(200), sstr("done"), u16b(0), u16b(0)))
	passiveDeclare := appendFrame(nil, frameMethod, 1, method(classQueue, 10, u16b(0), sstr(unique("no-queue")), []byte{0x01}, u32b(0)))
	strayHeader := appendFrame(nil, frameHeader, 5, contentPayload(1, 0))
	for _, tc := range []struct {
		name   string
		frames func(q string) [][]byte // sent together
		conn   bool                    // RabbitMQ closes the connection, not the channel
		lost   int
	}{
		{"refused publish", func(q string) [][]byte { return [][]byte{publish("", q), publish("", q), noExchange(), clientClose} }, false, 1},
		{"refused declare", func(q string) [][]byte { return [][]byte{publish("", q), publish("", q), passiveDeclare, clientClose} }, false, 0},
		{"commit before the close", func(q string) [][]byte { return [][]byte{publish("", q), noExchange(), txCommit, clientClose} }, false, 2},
		{"connection closed", func(q string) [][]byte { return [][]byte{publish("", q), publish("", q), clientClose, strayHeader} }, true, 0},
		{"connection closed, commit before the close", func(q string) [][]byte {
			return [][]byte{publish("", q), publish("", q), strayHeader, txCommit, clientClose}
		}, true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startProxy(t, nil)
			q := declareQueue(t, dial(t, h.url, "setup", 0), unique("crossing"))
			rc := rawDial(t, h.p.Addr().String())
			rc.send(appendFrame(nil, frameMethod, 1, method(classTx, 10)))
			rc.expect(mid(classTx, 11))
			rc.send(tc.frames(q)...)
			if tc.conn {
				rc.expect(connClose)
				rc.send(appendFrame(nil, frameMethod, 0, method(classConnection, 51)))
				if _, _, _, err := rc.next(); err == nil { // RabbitMQ closes the socket at the CloseOk
					t.Fatal("a frame after Connection.CloseOk")
				}
			} else {
				rc.expect(chanClose)
				rc.expect(mid(classChannel, 41)) // RabbitMQ's answer to the client's close
				rc.send(appendFrame(nil, frameMethod, 1, method(classChannel, 41)))
			}
			if lost := lostMessages(h); lost != tc.lost {
				t.Errorf("%d lost messages reported, want %d", lost, tc.lost)
			}
			if n := len(with(h.rec.points(), "direction:out", "topic:"+q)); n != 0 {
				t.Errorf("%d produced, want 0", n)
			}
			waitFor(t, "the transaction's held publishes released", func() bool { return h.p.heldTx.Used() == 0 })
			if d := queueDepth(t, q); d != 0 {
				t.Errorf("the queue holds %d messages, want 0", d)
			}
		})
	}
}

// TestRefusedPublishAfterPendingCommitLost: a Tx channel's client commits a publish, publishes
// once more (the publish RabbitMQ refuses) and closes the channel itself, and RabbitMQ's close
// (of the channel, 404, or of the connection, 505, which names no channel) crosses the client's
// before the CommitOk comes. Both publishes are lost (README, "What the proxy can and cannot
// see"): the commit's, and the refused one, which the closing channel's uncommitted ones, not
// counted, hold. It was counted as one of the commit's. Whether the CommitOk or the close comes
// first is up to RabbitMQ's processes, so the session is fed that order itself.
func TestRefusedPublishAfterPendingCommitLost(t *testing.T) {
	publish := appendFrame(nil, frameMethod, 1, method(classBasic, 40, u16b(0), sstr(""), sstr("q"), []byte{0}))
	client := [][]byte{
		appendFrame(nil, frameMethod, 1, method(classTx, 10)),
		publish,
		appendFrame(nil, frameMethod, 1, method(classTx, 20)),
		publish,
		appendFrame(nil, frameMethod, 1, method(classChannel, 40, u16b(200), sstr("done"), u16b(0), u16b(0))),
	}
	for _, tc := range []struct {
		name  string
		close []byte
	}{
		{"channel closed", appendFrame(nil, frameMethod, 1, method(classChannel, 40, u16b(404), sstr("NOT_FOUND - no exchange"), u16b(classBasic), u16b(40)))},
		{"connection closed", appendFrame(nil, frameMethod, 0, method(classConnection, 50, u16b(505), sstr("UNEXPECTED_FRAME"), u16b(classBasic), u16b(40)))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := &errRecorder{}
			p, err := New(Config{Listen: "127.0.0.1:0", Upstream: rabbitAddr, Observer: &recorder{}, Errors: errs,
				Services: &proxy.Services{Default: "svc"}, Log: zerolog.Nop()})
			if err != nil {
				t.Fatal(err)
			}
			s := &session{p: p, log: zerolog.Nop(), pub: map[uint16]*pubState{}, del: map[uint16]*delState{}, shared: map[uint16]*chanShared{}}
			s.setService("", "")
			for _, raw := range client {
				f, _, err := splitFrame(raw)
				if err != nil {
					t.Fatal(err)
				}
				s.clientMethod(f)
			}
			f, _, err := splitFrame(tc.close)
			if err != nil {
				t.Fatal(err)
			}
			s.brokerMethod(f)
			lost := 0
			for _, e := range errs.events() {
				if e.Category == errtrack.LostMessage {
					lost += e.Messages
				}
			}
			if lost != 2 {
				t.Errorf("%d lost messages reported, want 2 (the commit's publish and the refused one): %+v", lost, errs.events())
			}
		})
	}
}
