package amqp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// rawClient is a minimal AMQP 0-9-1 client on a socket, so a test can pipeline methods (send a
// request and a Close in one write) the way an asynchronous client may.
type rawClient struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func u16b(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func u32b(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func (rc *rawClient) send(frames ...[]byte) {
	rc.t.Helper()
	var b []byte
	for _, f := range frames {
		b = append(b, f...)
	}
	if _, err := rc.c.Write(b); err != nil {
		rc.t.Fatalf("raw write: %v", err)
	}
}

// next reads one frame: type, channel, method id (0 for non-method frames).
func (rc *rawClient) next() (byte, uint16, methodID, error) {
	rc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var h [7]byte
	if _, err := io.ReadFull(rc.r, h[:]); err != nil {
		return 0, 0, 0, err
	}
	size := binary.BigEndian.Uint32(h[3:])
	p := make([]byte, size+1)
	if _, err := io.ReadFull(rc.r, p); err != nil {
		return 0, 0, 0, err
	}
	if p[size] != frameEnd {
		return 0, 0, 0, fmt.Errorf("bad frame end")
	}
	var m methodID
	if h[0] == frameMethod {
		m = methodOf(p[:size])
	}
	return h[0], binary.BigEndian.Uint16(h[1:3]), m, nil
}

func (rc *rawClient) expect(want methodID) {
	rc.t.Helper()
	for {
		typ, _, m, err := rc.next()
		if err != nil {
			rc.t.Fatalf("waiting for %s: %v", methodName(want), err)
		}
		if typ == frameMethod && m == want {
			return
		}
	}
}

// rawDial opens a connection and channel 1 through addr.
func rawDial(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{t: t, c: c, r: bufio.NewReader(c)}
	rc.send(protocolHeader[:])
	rc.expect(connStart)
	rc.send(appendFrame(nil, frameMethod, 0, method(10, 11,
		table(entry("connection_name", 'S', lstr([]byte("raw-client")))),
		sstr("PLAIN"), lstr([]byte("\x00guest\x00guest")), sstr("en_US"))))
	rc.expect(connTune)
	rc.send(appendFrame(nil, frameMethod, 0, method(10, 31, u16b(2047), u32b(131072), u16b(0))),
		appendFrame(nil, frameMethod, 0, method(10, 40, sstr("/"), sstr(""), []byte{0})))
	rc.expect(connOpenOk)
	rc.send(appendFrame(nil, frameMethod, 1, method(20, 10, sstr(""))))
	rc.expect(mid(20, 11))
	return rc
}

func queueDepth(t *testing.T, q string) int {
	t.Helper()
	c, err := amqp091.Dial(directURL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	qi, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return qi.Messages
}

// TestNoWaitCancelledTagsGoFirst: the tags of consumers cancelled with no-wait stay in the
// channel's map (deliveries may still come for them). When the map is full they must be the
// first to go: clearing it all made a live consumer's deliveries lose their queue.
func TestNoWaitCancelledTagsGoFirst(t *testing.T) {
	h := startProxy(t, nil) // default MaxConsumers (4096)
	c := dial(t, h.url, "churner", 0)
	live := declareQueue(t, c, unique("live"))
	churn := declareQueue(t, c, unique("churn"))
	ch := channel(t, c)
	ds, err := ch.Consume(live, "live-consumer", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4096 {
		tag := fmt.Sprintf("churn-%d", i)
		if _, err := ch.Consume(churn, tag, true, false, false, true, nil); err != nil {
			t.Fatal(err)
		}
		if err := ch.Cancel(tag, true); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ch.QueueDeclarePassive(live, false, false, false, false, nil); err != nil { // a round trip
		t.Fatal(err)
	}
	pub := channel(t, c)
	if err := pub.PublishWithContext(context.Background(), "", live, false, false, amqp091.Publishing{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ds:
	case <-time.After(30 * time.Second):
		t.Fatal("nothing delivered to the live consumer")
	}
	waitFor(t, "a consume point", func() bool { return len(with(h.rec.points(), "direction:in")) == 1 })
	if got := with(h.rec.points(), "direction:in", "topic:"+live); len(got) != 1 {
		t.Errorf("the live consumer's delivery is not checkpointed on its queue %s: %v (UnknownQueue %d)",
			live, with(h.rec.points(), "direction:in")[0].EdgeTags, h.p.Stats().UnknownQueue)
	}
}

// TestGetOkAfterChannelClose: a Basic.GetOk that arrives after the client's Channel.Close is
// discarded by the client and the message requeued, as deliveries then are: it is not consumed,
// or the message counts twice once it is read again.
func TestGetOkAfterChannelClose(t *testing.T) {
	h := startProxy(t, nil)
	q := fullQueue(t, 1)
	rc := rawDial(t, h.p.Addr().String())
	rc.send(
		appendFrame(nil, frameMethod, 1, method(60, 70, u16b(0), sstr(q), []byte{0})), // Basic.Get, ack mode
		appendFrame(nil, frameMethod, 1, method(20, 40, u16b(200), sstr("bye"), u16b(0), u16b(0))),
	)
	getOk := 0
	for {
		typ, ch, m, err := rc.next()
		if err != nil {
			t.Fatal(err)
		}
		if typ == frameMethod && ch == 1 && m == basicGetOk {
			getOk++
		}
		if typ == frameMethod && ch == 1 && m == chanCloseOk {
			break
		}
	}
	if getOk != 1 {
		t.Fatalf("%d GetOk before CloseOk", getOk)
	}
	waitFor(t, "the message requeued", func() bool { return queueDepth(t, q) == 1 })
	// Read it for real, through the proxy.
	c := dial(t, h.url, "reader", 0)
	consumeN(t, channel(t, c), q, 1)
	waitFor(t, "the real consume point", func() bool { return h.p.Stats().Consumed >= 1 })
	time.Sleep(200 * time.Millisecond)
	if n := len(with(h.rec.points(), "direction:in", "topic:"+q)); n != 1 {
		t.Errorf("one message consumed once, %d consume checkpoints (the GetOk the client discarded after its Channel.Close counted)", n)
	}
}

// TestDeliveriesAfterClientClose: deliveries RabbitMQ sends after the client's Channel.Close or
// Connection.Close are discarded by the client (AMQP 0-9-1 connection.close: "any received
// methods except Close and Close-OK MUST be discarded") and requeued by the broker: they are not
// consumed. amqp091-go's Connection.Close sends Connection.Close without closing channels first,
// the usual way a consumer stops. The client here reads nothing before its Close, so every
// delivery it gets is discarded; the proxy may count only those it relayed before.
func TestDeliveriesAfterClientClose(t *testing.T) {
	for _, closeConn := range []bool{false, true} {
		t.Run(fmt.Sprint("connection close ", closeConn), func(t *testing.T) {
			// The proxy's consume count when it takes in the client's Close.
			closed := make(chan uint64, 1)
			// Atomic: the proxy reads its sockets with raw system calls, which the race detector
			// does not see as ordering the test's write before the hook's read.
			var hp atomic.Pointer[harness]
			h := startProxy(t, func(c *Config) {
				c.clientClosed = func() {
					select {
					case closed <- hp.Load().p.Stats().Consumed:
					default:
					}
				}
			})
			hp.Store(h)
			const n = 3000
			dc := dial(t, directURL, "filler", 0)
			q := declareQueue(t, dc, unique("big"))
			fill := channel(t, dc)
			body := make([]byte, 4096)
			for range n {
				if err := fill.PublishWithContext(context.Background(), "", q, false, false, amqp091.Publishing{Body: body}); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "the messages queued", func() bool { return queueDepth(t, q) == n })
			rc := rawDial(t, h.p.Addr().String())
			rc.send(appendFrame(nil, frameMethod, 1, method(60, 20, u16b(0), sstr(q), sstr("c1"), []byte{0x08}, lstr(nil)))) // nowait, ack mode
			// The client reads nothing: the sockets fill and the proxy waits on its write.
			settledConsumed(t, h)
			want := mid(20, 41)
			if closeConn {
				rc.send(appendFrame(nil, frameMethod, 0, method(10, 50, u16b(200), sstr("bye"), u16b(0), u16b(0))))
				want = connCloseOk
			} else {
				rc.send(appendFrame(nil, frameMethod, 1, method(20, 40, u16b(200), sstr("bye"), u16b(0), u16b(0))))
			}
			// Reading before the proxy has taken in the Close would race its two directions:
			// deliveries unblocked by the client's reads could be observed before the Close is.
			var before uint64
			select {
			case before = <-closed:
			case <-time.After(30 * time.Second):
				t.Fatal("the proxy did not take in the client's Close")
			}
			delivered := 0
			for {
				typ, _, m, err := rc.next()
				if err != nil {
					t.Fatal(err)
				}
				if typ == frameMethod && m == basicDeliver {
					delivered++
				}
				if typ == frameMethod && m == want {
					break
				}
			}
			waitFor(t, "every message requeued", func() bool { return queueDepth(t, q) == n })
			after := h.p.Stats().Consumed
			t.Logf("client got %d deliveries, all after its Close; proxy checkpointed %d before the Close, %d after", delivered, before, after-before)
			if after-before > 2 {
				t.Errorf("%d deliveries relayed after the client's Close (discarded by it, requeued by the broker) checkpointed as consumed", after-before)
			}
		})
	}
}

// settledConsumed waits until the proxy's consume count is above zero and has not moved for a
// second: its writes to a client that reads nothing are blocked.
func settledConsumed(t *testing.T, h *harness) {
	t.Helper()
	last, still := uint64(0), 0
	waitFor(t, "the proxy blocked on the full socket", func() bool {
		time.Sleep(90 * time.Millisecond)
		n := h.p.Stats().Consumed
		if n == 0 || n != last {
			last, still = n, 0
			return false
		}
		still++
		return still >= 10
	})
}

// TestNoWaitCancelsStayBounded: a client that consumes with no-wait, cancels with no-wait and
// then cancels again and gets the broker's CancelOk (RabbitMQ answers one for a tag it no longer
// knows) must not grow the channel's record of no-wait cancels: it stays within twice
// MaxConsumers however long the loop runs.
func TestNoWaitCancelsStayBounded(t *testing.T) {
	s := offlineSession(t, &recorder{})
	s.p.cfg.MaxConsumers = 8
	const loops = 200
	for i := range loops {
		tag := sstr(fmt.Sprintf("churn-%d", i))
		client := slices.Concat(
			appendFrame(nil, frameMethod, 1, method(classBasic, 20, []byte{0, 0}, sstr("q"), tag, []byte{0x08}, lstr(nil))), // no-wait
			appendFrame(nil, frameMethod, 1, method(classBasic, 30, tag, []byte{0x01})),                                     // no-wait
			appendFrame(nil, frameMethod, 1, method(classBasic, 30, tag, []byte{0x00})))
		if err := s.fromClient(newConnReader(bytes.NewReader(client), nil), newConnWriter(io.Discard)); err != io.EOF {
			t.Fatalf("client frames: %v", err)
		}
		ok := appendFrame(nil, frameMethod, 1, method(classBasic, 31, tag))
		if err := s.fromBroker(newConnReader(bytes.NewReader(ok), nil), newConnWriter(io.Discard)); err != io.EOF {
			t.Fatalf("broker frames: %v", err)
		}
	}
	cs := s.shared[1]
	if limit := 2 * s.p.cfg.MaxConsumers; len(cs.cancelledAt) > limit || len(cs.cancelled) > limit || len(cs.consumers) > s.p.cfg.MaxConsumers {
		t.Errorf("after %d loops: %d consumers, %d cancelled, %d cancelledAt; want at most %d, %d, %d",
			loops, len(cs.consumers), len(cs.cancelled), len(cs.cancelledAt), s.p.cfg.MaxConsumers, limit, limit)
	}
}

// TestUnansweredCommitsStayBounded: commits whose CommitOks have not come hold at most
// maxTxPoints publishes for them; the rest are checkpointed at once, and the CommitOks bring
// the held ones, so every publish is counted exactly once.
func TestUnansweredCommitsStayBounded(t *testing.T) {
	rec := &recorder{}
	s := offlineSession(t, rec)
	const perCommit, commits = 4000, 4
	publish := slices.Concat(
		appendFrame(nil, frameMethod, 1, method(classBasic, 40, []byte{0, 0}, sstr(""), sstr("q"), []byte{0})),
		appendFrame(nil, frameHeader, 1, contentPayload(1, 0)),
		appendFrame(nil, frameBody, 1, []byte("x")))
	stream := appendFrame(nil, frameMethod, 1, method(90, 10)) // Tx.Select
	for range commits {
		for range perCommit {
			stream = append(stream, publish...)
		}
		stream = appendFrame(stream, frameMethod, 1, method(90, 20)) // Tx.Commit, no CommitOk yet
	}
	if err := s.fromClient(newConnReader(bytes.NewReader(stream), nil), newConnWriter(io.Discard)); err != io.EOF {
		t.Fatalf("client frames: %v", err)
	}
	held := len(s.shared[1].committing)
	if early := len(rec.points()); held > maxTxPoints || held+early != perCommit*commits {
		t.Fatalf("%d publish points held for CommitOks and %d counted; want at most %d held and %d in all",
			held, early, maxTxPoints, perCommit*commits)
	}
	var oks []byte
	for range commits {
		oks = appendFrame(oks, frameMethod, 1, method(90, 21))
	}
	if err := s.fromBroker(newConnReader(bytes.NewReader(oks), nil), newConnWriter(io.Discard)); err != io.EOF {
		t.Fatalf("broker frames: %v", err)
	}
	if n := len(rec.points()); n != perCommit*commits {
		t.Errorf("%d publish points after the CommitOks, want %d", n, perCommit*commits)
	}
}

// TestConsumerMapResetCounted: when a channel holds MaxConsumers live tags (none cancelled to
// evict first), its map is started again and that is counted (Stats.ConsumerResets): the
// deliveries of the forgotten consumers show only as UnknownQueue otherwise.
func TestConsumerMapResetCounted(t *testing.T) {
	s := offlineSession(t, &recorder{})
	s.p.cfg.MaxConsumers = 2
	var client []byte
	for i := range 3 {
		tag := sstr(fmt.Sprintf("live-%d", i))
		client = appendFrame(client, frameMethod, 1, method(classBasic, 20, []byte{0, 0}, sstr("q"), tag, []byte{0x08}, lstr(nil))) // no-wait
	}
	if err := s.fromClient(newConnReader(bytes.NewReader(client), nil), newConnWriter(io.Discard)); err != io.EOF {
		t.Fatalf("client frames: %v", err)
	}
	if got := s.p.Stats().ConsumerResets; got != 1 {
		t.Errorf("ConsumerResets = %d after a third live tag with room for 2, want 1", got)
	}
	if got, kept := s.p.tags.Used(), len(s.shared[1].consumers); got != int64(kept) || kept != 1 {
		t.Errorf("the proxy counts %d tags, the channel keeps %d; want 1 and 1 (maxConsumerTags)", got, kept)
	}
}
