package amqp

import (
	"net"
	"strings"
	"sync"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// readGate is a client connection whose reads can be held (from hold until release), so that
// what the broker sends piles up in front of the proxy while the client's writes still go out.
type readGate struct {
	net.Conn
	mu   sync.Mutex
	wait chan struct{} // closed by release; nil while reads go
}

func (g *readGate) Read(p []byte) (int, error) {
	g.mu.Lock()
	wait := g.wait
	g.mu.Unlock()
	if wait != nil {
		<-wait
	}
	return g.Conn.Read(p)
}

func (g *readGate) hold() {
	g.mu.Lock()
	g.wait = make(chan struct{})
	g.mu.Unlock()
}

func (g *readGate) release() {
	g.mu.Lock()
	if g.wait != nil {
		close(g.wait)
		g.wait = nil
	}
	g.mu.Unlock()
}

// TestDiscardedDeliveriesFitConsumerFrameMax: deliveries RabbitMQ sent before it read a client's
// Channel.Close reach the client after it, and the client discards them, but it still reads each
// frame, and amqp091-go ends the whole connection on a frame over its frame_max. A header frame
// that fits the consumer's 8192 bytes direct and not with the entry the proxy added at the publish
// must lose the entry on such a delivery too, or closing one channel costs the connection and its
// other channels. The client's reads are held until the proxy has seen the Close (RabbitMQ has
// requeued the deliveries it answered), so the deliveries after it are certain to be there.
func TestDiscardedDeliveriesFitConsumerFrameMax(t *testing.T) {
	h := startProxy(t, nil)
	pub := dial(t, h.url, "publisher", 131072)
	q := declareQueue(t, pub, unique("discard-frame-8k"))
	pch := channel(t, pub)
	// More header bytes than the sockets between RabbitMQ and the client can hold (a few MiB each).
	const n = 3000
	pads := make([]int, n)
	for i := range pads {
		pads[i] = 8120 // an 8155-byte header frame: fits 8192 direct, not with the entry
	}
	publishPadded(t, pch, q, pads...)
	ready := func() int {
		qi, err := pch.QueueDeclarePassive(q, false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		return qi.Messages
	}
	waitFor(t, "the messages queued", func() bool { return ready() == n })

	gate := &readGate{}
	con, err := amqp091.DialConfig(h.url, amqp091.Config{
		Properties: amqp091.Table{"connection_name": "consumer-8k-closing"}, FrameSize: 8192,
		Dial: func(network, addr string) (net.Conn, error) {
			nc, err := net.Dial(network, addr)
			if err != nil {
				return nil, err
			}
			if err := nc.(*net.TCPConn).SetReadBuffer(64 << 10); err != nil {
				return nil, err
			}
			gate.Conn = nc
			return gate, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close()
	closed := con.NotifyClose(make(chan *amqp091.Error, 1))
	other := channel(t, con)
	ch := channel(t, con)
	ds, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range ds { // closed with the channel (or the connection)
		}
	}()
	gate.hold()
	defer gate.release()
	// The client's small receive buffer (no autotuning) and the proxy's send buffer (at most
	// net.ipv4.tcp_wmem's 4 MiB by default) hold fewer than 550 of these deliveries: of 800
	// RabbitMQ has taken off the queue, some are still ahead of the proxy when the Close passes
	// it. (RabbitMQ, its socket to the proxy and the proxy's buffers took 1100-1250 here.)
	waitFor(t, "RabbitMQ to deliver 800 messages", func() bool { return ready() <= n-800 })
	before := ready()
	closeErr := make(chan error, 1)
	go func() { closeErr <- ch.Close() }()
	// RabbitMQ requeues the unacked deliveries once it has the Close, which the proxy forwarded.
	waitFor(t, "RabbitMQ to requeue at the Close", func() bool { return ready() > before })
	gate.release()
	if err := <-closeErr; err != nil {
		t.Errorf("closing the consumer's channel: %v", err)
	}
	if _, err := other.QueueDeclarePassive(q, false, false, false, false, nil); err != nil {
		t.Errorf("the connection's other channel after the close: %v", err)
	}
	select {
	case e := <-closed:
		if e != nil && strings.Contains(e.Error(), "frame") {
			t.Errorf("the consumer lost its connection: %v", e)
		} else if e != nil {
			t.Errorf("the consumer's connection closed: %v", e)
		}
	default:
	}
}
