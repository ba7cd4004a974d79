package amqp

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// stallConn is a client connection whose reads wait while a gate is set and open (an
// application whose reading goroutine is stuck); writes go on.
type stallConn struct {
	net.Conn
	gate atomic.Pointer[chan struct{}]
}

func (c *stallConn) Read(b []byte) (int, error) {
	if g := c.gate.Load(); g != nil {
		<-*g
	}
	return c.Conn.Read(b)
}

// TestStalledReaderLearnsOfBrokerReset: a client whose reader is stuck while the broker sends it
// more than the sockets hold, and whose heartbeater keeps writing. RabbitMQ's host then resets the connection.
// Direct, the client's next heartbeat fails and it learns the connection is gone; through the
// proxy it must learn it too, and the proxy must let go of the connection, though the client
// reads nothing.
func TestStalledReaderLearnsOfBrokerReset(t *testing.T) {
	for _, path := range []string{"direct", "proxy"} {
		t.Run(path, func(t *testing.T) {
			ups := make(chan *net.TCPAddr, 1)
			record := func(c net.Conn) { ups <- c.LocalAddr().(*net.TCPAddr) }
			url := directURL
			var h *harness
			if path == "proxy" {
				h = startProxy(t, recordDials(record))
				url = h.url
			}
			sc := &stallConn{}
			cfg := amqp091.Config{Heartbeat: 4 * time.Second, Dial: func(network, addr string) (net.Conn, error) {
				conn, err := net.Dial(network, addr)
				if err == nil && path == "direct" {
					record(conn)
				}
				sc.Conn = conn
				return sc, err
			}}
			c, err := amqp091.DialConfig(url, cfg)
			if err != nil {
				t.Fatal(err)
			}
			closed := c.NotifyClose(make(chan *amqp091.Error, 1))
			ch, err := c.Channel()
			if err != nil {
				t.Fatal(err)
			}
			gate := make(chan struct{})
			sc.gate.Store(&gate)
			defer close(gate)
			body := make([]byte, 1<<20)
			key := unique("nobody-listens")
			for range 64 {
				if err := ch.PublishWithContext(context.Background(), "", key, true, false, amqp091.Publishing{Body: body}); err != nil {
					t.Fatal(err)
				}
			}
			up := <-ups
			if h != nil {
				// The proxy is stuck writing returns to the client.
				waitFor(t, "the proxy to relay returns", func() bool { return h.p.Stats().Returns > 0 })
			}
			time.Sleep(2 * time.Second) // let the broker fill what the sockets hold
			killBrokerSide(t, up)
			select {
			case e := <-closed:
				t.Logf("%s: closed: %v", path, e)
				if e == nil {
					t.Errorf("closed without an error, want the failure")
				}
			case <-time.After(90 * time.Second):
				t.Fatalf("%s: the client never learned that the broker reset the connection", path)
			}
			if h != nil {
				waitFor(t, "the proxy to end the connection", func() bool { return h.p.Stats().OpenConnections == 0 })
				waitFor(t, "the relay buffers to go back", func() bool { return h.p.Stats().RelayBuffers == 0 })
			}
		})
	}
}
